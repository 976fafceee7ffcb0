"""Generation speed of each method on one causal-LM shape, measured side by side.

    OMP_NUM_THREADS=1 python scripts/bench_generate.py --preset llama-small-cpu
    python scripts/bench_generate.py --preset llama2-7b-gpu

Greedy `generate()` with the KV cache, `--batch` prompts of `--prompt-length` random tokens. Workers
and rounds as in bench_methods.py (a process per method and round on a CPU, one per round on a GPU;
a failing method is a row saying so; `--time-limit`; `--out` / `--md` rewritten after every method),
whose presets and method wrappers this uses (its batch and length are for training and are not used
here). Per method: the prefill (a generate() of one new token) and the
cost of each further token, (time of `--new-tokens` - prefill) / (new tokens - 1): the decode step,
where an adapter's per-layer overhead shows most (one token's worth of arithmetic against the same
number of operator calls). Beside the times, the operators one decode step dispatches (views
excluded; on a GPU each is at least one kernel launch) and the Python function calls it makes
(cProfile's count), which no noise touches.

Methods: `base` (the model without adapters), PEFT `lora` (r=8, q/v) and `ia3`, `loretta_adp`,
`loretta_rep`, and `loretta_rep_merged` (merge_and_unload(): a stock model again, so the base's
cost); on a mixture of experts also `lora_experts`, `loretta_rep_experts` and `loretta_rep_experts_merged`
(the experts' own weights adapted: bench_methods.py). Weights are random: only shapes matter for speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import (EXPERTS_NOTE, PRESETS, add_run_arguments, adapts_experts, build_model,  # noqa: E402
                           check_run_arguments, lora_reference, operator_counter, rounds_of_workers, serve_methods,
                           wrap, write_atomically, write_rows)

METHODS = ("base", "lora", "ia3", "loretta_adp", "loretta_rep", "loretta_rep_merged")
# on a mixture of experts (the tiny-moe / moe-small presets): the experts' own weights adapted, each
# compared with LoRA on the same weights; merged, the experts' W + dW is no longer made at every token
EXPERT_METHODS = ("lora_experts", "loretta_rep_experts", "loretta_rep_experts_merged")
CAUSAL_PRESETS = sorted(name for name, preset in PRESETS.items() if preset.task == "CAUSAL_LM")


def prepare(preset_name: str, method: str):
    """The preset's model with `method` applied, in eval mode; (model, trainable parameters)."""
    preset = PRESETS[preset_name]
    model = build_model(preset)
    if method == "base":
        return model.eval(), 0
    wrapped = wrap(model, method.removesuffix("_merged"), preset)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    if method.endswith("_merged"):
        wrapped = wrapped.merge_and_unload()
    return wrapped.eval(), trainable


def kv_cache(output) -> dict:
    """A forward's KV cache as the keyword argument that passes it to the next forward: transformers 5.24
    calls it `cache` (the old name `past_key_values` goes in 5.40); 5.0 knows only the old one."""
    name = "cache" if "cache" in output else "past_key_values"
    return {name: output[name]}


def decode_step_counts(model, prompt) -> tuple[int, int]:
    """(operators dispatched, Python function calls made) by one decode step: a one-token forward on
    the prompt's KV cache (after one such step: the first builds what is built once). The Python calls
    (cProfile's count, built-ins included) are the interpreter's share of a decode step, which on a
    small model or a GPU is much of its time: like the operators, a count that no noise touches."""
    import cProfile
    import pstats

    import torch

    with torch.no_grad():
        cache = kv_cache(model(input_ids=prompt, use_cache=True))
        next_token = prompt[:, -1:]
        model(input_ids=next_token, **cache, use_cache=True)
        with operator_counter() as ops:
            model(input_ids=next_token, **cache, use_cache=True)
        profile = cProfile.Profile()
        profile.enable()
        model(input_ids=next_token, **cache, use_cache=True)
        profile.disable()
    return ops.calls, pstats.Stats(profile).total_calls


def run_worker(preset_name: str, method: str, batch: int, prompt_length: int, new_tokens: int, steps: int) -> dict:
    import torch

    preset = PRESETS[preset_name]
    started = time.perf_counter()
    torch.manual_seed(0)
    model, trainable = prepare(preset_name, method)
    prompt = torch.randint(5, model.config.vocab_size, (batch, prompt_length), device=preset.device)
    sync = torch.cuda.synchronize if preset.device == "cuda" else (lambda: None)

    def generate(tokens: int) -> float:
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens,
                                 min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        sync()
        assert out.shape[1] == prompt_length + tokens
        return time.perf_counter() - start

    generate(2)  # warm-up
    prefill, full = [], []
    for _ in range(steps):
        prefill.append(generate(1))
        full.append(generate(new_tokens))
    ops, python_calls = decode_step_counts(model, prompt)
    return {"method": method, "trainable_params": trainable, "prefill_s": prefill, "full_s": full,
            "ops_per_token": ops, "python_calls_per_token": python_calls, "seconds": time.perf_counter() - started}


def per_token(record: dict, new_tokens: int) -> float:
    """Seconds per new token after the first: from the medians of the two timings."""
    return (statistics.median(record["full_s"]) - statistics.median(record["prefill_s"])) / (new_tokens - 1)


def orchestrate(args, on_update=None) -> list[dict]:
    """One row per method from interleaved rounds of workers; `on_update(rows)` after every method."""
    records: dict[str, list[tuple[int, dict]]] = defaultdict(list)

    def on_record(round_index: int, record: dict) -> None:
        records[record["method"]].append((round_index, record))
        if "full_s" in record:
            note = f"{per_token(record, args.new_tokens) * 1e3:8.2f} ms per token ({record['seconds']:.0f} s)"
        else:
            note = record.get("error") or f"skipped ({record.get('skipped')})"
        print(f"  round {round_index + 1}/{args.rounds} {record['method']:20s} {note}", file=sys.stderr, flush=True)
        if on_update is not None:
            on_update(rows_from(records, args))

    worker_args = ["--preset", args.preset, "--batch", str(args.batch), "--prompt-length", str(args.prompt_length),
                   "--new-tokens", str(args.new_tokens), "--steps", str(args.steps)]
    rounds_of_workers(args, __file__, lambda round_index: worker_args, on_record, "bench_generate")
    return rows_from(records, args)


def rows_from(records: dict[str, list[tuple[int, dict]]], args) -> list[dict]:
    """One row per method that has a record (measured, or why not), in args.methods' order."""
    measured = {m: [(i, r) for i, r in records.get(m, []) if "full_s" in r] for m in args.methods}

    def merged(method) -> dict:
        first = measured[method][0][1]
        return {**first, "prefill_s": [t for _, r in measured[method] for t in r["prefill_s"]],
                "full_s": [t for _, r in measured[method] for t in r["full_s"]]}

    by_round = {m: {i: per_token(r, args.new_tokens) for i, r in measured[m]} for m in args.methods}
    reference = {name: per_token(merged(name), args.new_tokens) for name in ("base", "lora", "lora_experts")
                 if measured.get(name)}
    rows = []
    for method in args.methods:
        if not records.get(method):
            continue
        problems = [r.get("error") or f"skipped ({r['skipped']})" for _, r in records[method] if "full_s" not in r]
        if not measured[method]:
            rows.append({"method": method, "error": problems[-1]})
            continue
        record = merged(method)
        token = per_token(record, args.new_tokens)
        lora = lora_reference(method)
        own, lora_rounds = by_round[method], by_round.get(lora, {})
        rows.append({
            "method": method,
            "trainable_params": record["trainable_params"],
            "prefill_ms": statistics.median(record["prefill_s"]) * 1e3,
            "ms_per_token": token * 1e3,
            "vs_base": token / reference["base"] if "base" in reference else None,
            "vs_lora": token / reference[lora] if lora in reference else None,
            "vs_lora_by_round": ([own[i] / lora_rounds[i] for i in sorted(own) if i in lora_rounds]
                                 if lora in reference else None),
            "ops_per_token": record["ops_per_token"],
            "python_calls_per_token": record["python_calls_per_token"],
            "rounds": len(measured[method]),
            **({"problems": problems} if problems else {}),
        })
    return rows


def markdown(rows, args) -> str:
    p = PRESETS[args.preset]
    fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    spread = lambda rs: "—" if not rs else (f"{min(rs):.2f}" if f"{min(rs):.2f}" == f"{max(rs):.2f}"  # noqa: E731
                                            else f"{min(rs):.2f}–{max(rs):.2f}")
    lines = [f"{args.preset}: {p.model_type} {p.dtype}, {p.device}; greedy generate(), batch {args.batch}, prompt "
             f"{args.prompt_length} tokens, {args.new_tokens} new tokens, {args.rounds} rounds x {args.steps}", "",
             "| method | trainable params | prefill (ms) | ms per new token | / base | / LoRA | / LoRA, each round "
             "| ops per new token | Python calls per new token |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | not measured |" + " — |" * 7)
            notes.append(f"- {r['method']}: {r['error']}")
            continue
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {r['prefill_ms']:.1f} | {r['ms_per_token']:.2f} | "
                     f"{fmt(r['vs_base'])} | {fmt(r['vs_lora'])} | {spread(r['vs_lora_by_round'])} | "
                     f"{r['ops_per_token']:,} | {r['python_calls_per_token']:,} |")
        notes += [f"- {r['method']}, {problem}" for problem in r.get("problems", [])]
    if any(adapts_experts(r["method"]) for r in rows):
        lines += ["", EXPERTS_NOTE]
    if notes:
        lines += ["", "Not measured (or not in every round):", *notes]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama-small-cpu", choices=CAUSAL_PRESETS)
    add_run_arguments(parser, METHODS + EXPERT_METHODS, METHODS, default_rounds=3)
    parser.add_argument("--steps", type=int, default=3, help="timed generate() pairs per worker")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    check_run_arguments(parser, args, (("rounds", 1), ("steps", 1), ("batch", 1), ("prompt_length", 1),
                                       ("new_tokens", 2)))
    if args.worker:
        measure = lambda method: run_worker(args.preset, method, args.batch, args.prompt_length,  # noqa: E731
                                            args.new_tokens, args.steps)
        sys.exit(serve_methods(args.worker, measure, args.stop_at, args.expected))

    def save(rows) -> None:
        if args.out:
            write_rows(args.out, args.preset, rows)
        if args.md:
            write_atomically(args.md, markdown(rows, args) + "\n")

    rows = orchestrate(args, on_update=save)
    save(rows)
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
