"""Generation speed of each method on one causal-LM shape, measured side by side.

    OMP_NUM_THREADS=1 python scripts/bench_generate.py --preset llama-small-cpu
    python scripts/bench_generate.py --preset llama2-7b-gpu

Greedy `generate()` with the KV cache, `--batch` prompts of `--prompt-length` random tokens. Each
(method, round) runs in a fresh worker process and rounds interleave the methods, as in
bench_methods.py (whose presets and method wrappers this uses; its batch and length are for
training and are not used here). Per method: the prefill (a generate() of one new token) and the
cost of each further token, (time of `--new-tokens` - prefill) / (new tokens - 1): the decode step,
where an adapter's per-layer overhead shows most (one token's worth of arithmetic against the same
number of operator calls). Beside the times, the operators one decode step dispatches (views
excluded; on a GPU each is at least one kernel launch) and the Python function calls it makes
(cProfile's count), which no noise touches.

Methods: `base` (the model without adapters), PEFT `lora` (r=8, q/v) and `ia3`, `loretta_adp`,
`loretta_rep`, and `loretta_rep_merged` (merge_and_unload(): a stock model again, so the base's
cost). Weights are random: only shapes matter for speed.
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
from bench_methods import PRESETS, build_model, operator_counter, run_in_worker_process, wrap, write_rows  # noqa: E402

METHODS = ("base", "lora", "ia3", "loretta_adp", "loretta_rep", "loretta_rep_merged")
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


def decode_step_counts(model, prompt) -> tuple[int, int]:
    """(operators dispatched, Python function calls made) by one decode step: a one-token forward on
    the prompt's KV cache (after one such step: the first builds what is built once). The Python calls
    (cProfile's count, built-ins included) are the interpreter's share of a decode step, which on a
    small model or a GPU is much of its time: like the operators, a count that no noise touches."""
    import cProfile
    import pstats

    import torch

    with torch.no_grad():
        past = model(input_ids=prompt, use_cache=True).past_key_values
        next_token = prompt[:, -1:]
        model(input_ids=next_token, past_key_values=past, use_cache=True)
        with operator_counter() as ops:
            model(input_ids=next_token, past_key_values=past, use_cache=True)
        profile = cProfile.Profile()
        profile.enable()
        model(input_ids=next_token, past_key_values=past, use_cache=True)
        profile.disable()
    return ops.calls, pstats.Stats(profile).total_calls


def run_worker(preset_name: str, method: str, batch: int, prompt_length: int, new_tokens: int, steps: int) -> dict:
    import torch

    preset = PRESETS[preset_name]
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
            "ops_per_token": ops, "python_calls_per_token": python_calls}


def per_token(record: dict, new_tokens: int) -> float:
    """Seconds per new token after the first: from the medians of the two timings."""
    return (statistics.median(record["full_s"]) - statistics.median(record["prefill_s"])) / (new_tokens - 1)


def orchestrate(args) -> list[dict]:
    records, by_round = {}, defaultdict(list)
    for round_index in range(args.rounds):
        for method in args.methods:
            record = run_in_worker_process(
                __file__, ["--worker", method, "--preset", args.preset, "--batch", str(args.batch), "--prompt-length",
                           str(args.prompt_length), "--new-tokens", str(args.new_tokens), "--steps", str(args.steps)],
                f"worker {method} (round {round_index})")
            by_round[method].append(per_token(record, args.new_tokens))
            merged = records.setdefault(method, {**record, "prefill_s": [], "full_s": []})
            merged["prefill_s"] += record["prefill_s"]
            merged["full_s"] += record["full_s"]
            print(f"  round {round_index + 1}/{args.rounds} {method:20s} {by_round[method][-1] * 1e3:8.2f} ms per token",
                  file=sys.stderr, flush=True)
    reference = {name: per_token(records[name], args.new_tokens) for name in ("base", "lora") if name in records}
    rows = []
    for method in args.methods:
        record = records[method]
        token = per_token(record, args.new_tokens)
        rows.append({
            "method": method,
            "trainable_params": record["trainable_params"],
            "prefill_ms": statistics.median(record["prefill_s"]) * 1e3,
            "ms_per_token": token * 1e3,
            "vs_base": token / reference["base"] if "base" in reference else None,
            "vs_lora": token / reference["lora"] if "lora" in reference else None,
            "vs_lora_by_round": ([m / l for m, l in zip(by_round[method], by_round["lora"])]
                                 if "lora" in reference else None),
            "ops_per_token": record["ops_per_token"],
            "python_calls_per_token": record["python_calls_per_token"],
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
    for r in rows:
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {r['prefill_ms']:.1f} | {r['ms_per_token']:.2f} | "
                     f"{fmt(r['vs_base'])} | {fmt(r['vs_lora'])} | {spread(r['vs_lora_by_round'])} | "
                     f"{r['ops_per_token']:,} | {r['python_calls_per_token']:,} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama-small-cpu", choices=CAUSAL_PRESETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one worker per method per round)")
    parser.add_argument("--steps", type=int, default=3, help="timed generate() pairs per worker")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, low in (("rounds", 1), ("steps", 1), ("batch", 1), ("prompt_length", 1), ("new_tokens", 2)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if args.worker:
        print(json.dumps(run_worker(args.preset, args.worker, args.batch, args.prompt_length, args.new_tokens,
                                    args.steps)))
        return
    rows = orchestrate(args)
    print(markdown(rows, args))
    if args.out:
        write_rows(args.out, args.preset, rows)


if __name__ == "__main__":
    main()
