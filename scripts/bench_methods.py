"""Step time and memory of every PEFT method on one model shape, measured side by side.

    python scripts/bench_methods.py --preset deberta-base-cpu      # CPU, DeBERTa-base shape
    python scripts/bench_methods.py --preset llama-small-cpu       # CPU, small LLaMA shape
    python scripts/bench_methods.py --preset llama2-7b-gpu         # GPU, LLaMA-2-7B shape, bf16, 4x512
    python scripts/bench_methods.py --preset deberta-base-gpu      # GPU, DeBERTa-base, fp32, 32x128

Each (method, round) runs in a fresh worker process, so memory peaks are per method and no
method inherits another's allocator state; rounds interleave the methods so that drift on a noisy
machine hits all of them alike. A step is forward + loss + backward + AdamW step. "floor" is the
frozen model with a full backward pass (the input embeddings require grad) and no weight grads:
the cost every method pays before its own. Weights are random (only shapes matter for speed).
Each method's ratio to LoRA is also given within each round (its range over the rounds shows what
the machine's noise can do to a difference), beside the deterministic arithmetic: the FLOPs of one
forward and backward pass (torch's FlopCounterMode), which no noise touches.

Memory is reported twice: the peak (CUDA allocator; on the CPU the worker's peak RSS, which is
noisy), and deterministically what a method adds to the frozen model: the bytes autograd saves for
the backward pass of one forward, and the trainable state (weight, gradient and AdamW's two moments:
16 bytes per trainable parameter).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace

METHODS = ("floor", "ft", "lora", "ia3", "adapters", "loretta_adp", "loretta_rep")
# not run by default (memory comparisons): LoRETTA with its layer norms frozen, as LoRA leaves them,
# and with its trainable norms keeping their normalised input instead of recomputing it in backward;
# LoRETTA_adp's projections multiplying by their two TT factors, or by the rebuilt matrix, whatever
# the device's default (tt_forward: factors on a CPU, the matrix on a GPU)
EXTRA_METHODS = ("loretta_adp_frozen_norms", "loretta_rep_frozen_norms",
                 "loretta_adp_stored_norms", "loretta_rep_stored_norms",
                 "loretta_adp_factors", "loretta_adp_matrix")


@dataclass(frozen=True)
class Preset:
    model_type: str
    task: str  # "SEQ_CLS" or "CAUSAL_LM"
    config: dict
    batch: int
    length: int
    dtype: str  # dtype of the base model weights
    device: str


# microsoft/deberta-base's config.json: disentangled attention, which AutoConfig's defaults leave off
# (c2p and p2c add two projections of the relative-position table and two products to each layer)
DEBERTA_BASE = dict(relative_attention=True, pos_att_type=["c2p", "p2c"], position_biased_input=False,
                    max_relative_positions=-1, type_vocab_size=0, layer_norm_eps=1e-7)

PRESETS = {
    # smoke-test sizes (tests/lib/test_bench_script.py)
    "tiny-cpu": Preset("llama", "CAUSAL_LM", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100),
                       2, 16, "float32", "cpu"),
    "tiny-deberta-cpu": Preset("deberta", "SEQ_CLS", dict(DEBERTA_BASE, hidden_size=64, intermediate_size=128,
                                                          num_hidden_layers=2, num_attention_heads=4, vocab_size=100),
                               2, 16, "float32", "cpu"),
    "deberta-base-cpu": Preset("deberta", "SEQ_CLS", DEBERTA_BASE, 8, 128, "float32", "cpu"),
    "llama-small-cpu": Preset(
        "llama",
        "CAUSAL_LM",
        dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=4, vocab_size=32000),
        4,
        128,
        "float32",
        "cpu",
    ),
    "deberta-base-gpu": Preset("deberta", "SEQ_CLS", DEBERTA_BASE, 32, 128, "float32", "cuda"),
    "llama2-7b-gpu": Preset(
        "llama",
        "CAUSAL_LM",
        dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
             num_key_value_heads=32, vocab_size=32000),
        4,
        512,
        "bfloat16",
        "cuda",
    ),
}


def build_model(preset: Preset):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.for_model(preset.model_type, **preset.config)
    auto = AutoModelForSequenceClassification if preset.task == "SEQ_CLS" else AutoModelForCausalLM
    torch.manual_seed(0)
    with torch.device(preset.device):
        model = auto.from_config(config, dtype=getattr(torch, preset.dtype))
    return model


def wrap(model, method: str, preset: Preset):
    """Apply `method` to `model`; returns the model to train."""
    from peft import IA3Config, LoraConfig

    from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model
    from loretta.presets import preset_for

    family = preset_for(model.config.model_type)
    if method == "floor":
        model.requires_grad_(False)
        model.enable_input_require_grads()  # full backward through the frozen network
        return model
    if method == "ft":
        model.requires_grad_(True)
        return model
    configs = {
        "lora": lambda: LoraConfig(task_type=preset.task, r=8, lora_alpha=16, lora_dropout=0.05,
                                   target_modules=list(family.rep_targets)),
        "ia3": lambda: IA3Config(task_type=preset.task),
        "adapters": lambda: LorettaAdpConfig(task_type=preset.task, tensorized=False),
        "loretta_adp": lambda: LorettaAdpConfig(task_type=preset.task),
        "loretta_rep": lambda: LorettaRepConfig(task_type=preset.task),
        "loretta_adp_frozen_norms": lambda: LorettaAdpConfig(task_type=preset.task, trainable_layer_norms=False),
        "loretta_rep_frozen_norms": lambda: LorettaRepConfig(task_type=preset.task, trainable_layer_norms=False),
        "loretta_adp_stored_norms": lambda: LorettaAdpConfig(task_type=preset.task, recompute_layer_norms=False),
        "loretta_rep_stored_norms": lambda: LorettaRepConfig(task_type=preset.task, recompute_layer_norms=False),
        "loretta_adp_factors": lambda: LorettaAdpConfig(task_type=preset.task, tt_forward="factors"),
        "loretta_adp_matrix": lambda: LorettaAdpConfig(task_type=preset.task, tt_forward="matrix"),
    }
    return get_peft_model(model, configs[method]())


def peak_memory_bytes(device: str) -> int:
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def saved_by_module_type(model, forward) -> dict[str, int]:
    """Bytes of the tensors autograd keeps for the backward pass of one forward, by the type of the
    innermost module running when each storage was first saved; counted once per storage and
    without the model's parameters, which every method holds anyway. Deterministic, unlike a
    process's peak RSS."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    running: list[str] = []

    def enter(module, args):
        running.append(type(module).__name__)  # a hook's return value would replace the input: none

    def leave(module, args, output):
        running.pop()

    handles = [h for module in model.modules()
               for h in (module.register_forward_pre_hook(enter), module.register_forward_hook(leave))]
    seen: set[int] = set()
    by_type: dict[str, int] = defaultdict(int)

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            by_type[running[-1] if running else "(top level)"] += storage.nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = forward()
        del loss  # frees the graph without a backward pass
    finally:
        for handle in handles:
            handle.remove()
    return dict(by_type)


def operator_counter():
    """A dispatch mode counting the operators run inside it (views excluded) in `.calls`."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                self.calls += 1
            return func(*args, **(kwargs or {}))

    return Count()


def step_counts(model, forward) -> tuple[int, int]:
    """(FLOPs, operators) of one forward and backward pass, counted in the same pass; the gradients
    are discarded. Both are deterministic, unlike the step time:
    - FLOPs by torch's FlopCounterMode, from the shapes of the matrix products and attention
      (elementwise work and the optimizer are not counted): the arithmetic a method adds;
    - operators dispatched, views excluded. On a GPU each is at least one kernel launch (a few
      microseconds however small its work), so many tiny products or elementwise passes cost time
      that their FLOPs do not show."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as flops, operator_counter() as ops:
        forward().backward()
    model.zero_grad(set_to_none=True)
    return flops.get_total_flops(), ops.calls


def saved_activation_bytes(model, forward) -> int:
    """The activation memory a method adds: all bytes saved for backward (see saved_by_module_type)."""
    return sum(saved_by_module_type(model, forward).values())


def make_batch(model, preset: Preset):
    """Random token ids, and labels for the preset's task."""
    import torch

    ids = torch.randint(5, model.config.vocab_size, (preset.batch, preset.length), device=preset.device)
    labels = torch.randint(0, 2, (preset.batch,), device=preset.device) if preset.task == "SEQ_CLS" else ids
    return ids, labels


def run_worker(preset_name: str, method: str, warmup: int, steps: int) -> dict:
    import torch

    preset = PRESETS[preset_name]
    torch.manual_seed(0)
    model = wrap(build_model(preset), method, preset)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5) if params else None
    ids, labels = make_batch(model, preset)
    sync = torch.cuda.synchronize if preset.device == "cuda" else (lambda: None)
    if preset.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def forward():
        return model(input_ids=ids, labels=labels).loss

    def step():
        loss = forward()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    activations = saved_activation_bytes(model, forward)
    flops, ops = step_counts(model, forward)
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return {
        "method": method,
        "trainable_params": sum(p.numel() for p in params),
        "step_times": times,
        "peak_memory_bytes": peak_memory_bytes(preset.device),
        "saved_activation_bytes": activations,
        "flops": flops,
        "ops": ops,
        # fp32 weight, gradient and AdamW's two moments per trainable parameter
        "trainable_state_bytes": 16 * sum(p.numel() for p in params),
    }


def run_in_worker_process(script: str, args: list[str], what: str) -> dict:
    """Run `script` with `args` in a fresh Python process and parse the JSON of its last stdout line:
    one process per measured model, so that no measurement inherits another's memory."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def orchestrate(args) -> list[dict]:
    results: dict[str, dict] = {}
    round_medians: dict[str, list[float]] = defaultdict(list)  # per method, its median step in each round
    for round_index in range(args.rounds):
        for method in args.methods:
            record = run_in_worker_process(
                __file__, ["--worker", method, "--preset", args.preset, "--warmup", str(args.warmup),
                           "--steps", str(args.steps)], f"worker {method} (round {round_index})")
            merged = results.setdefault(method, {**record, "step_times": [], "peak_memory_bytes": 0})
            merged["step_times"] += record["step_times"]
            merged["peak_memory_bytes"] = max(merged["peak_memory_bytes"], record["peak_memory_bytes"])
            round_medians[method].append(statistics.median(record["step_times"]))
            print(f"  round {round_index + 1}/{args.rounds} {method:12s} "
                  f"median {round_medians[method][-1] * 1e3:8.1f} ms", file=sys.stderr, flush=True)
    rows = []
    floor = statistics.median(results["floor"]["step_times"]) if "floor" in results else None
    lora = statistics.median(results["lora"]["step_times"]) if "lora" in results else None
    lora_flops = results["lora"]["flops"] if "lora" in results else None
    for method in args.methods:
        r = results[method]
        median = statistics.median(r["step_times"])
        rows.append({
            "method": method,
            "trainable_params": r["trainable_params"],
            "median_step_ms": median * 1e3,
            "vs_floor": median / floor if floor else None,
            "vs_lora": median / lora if lora else None,
            # the ratio within each round (the methods of a round ran minutes apart): its spread over
            # the rounds shows how much of a difference from LoRA this machine's noise can make
            "vs_lora_by_round": ([m / l for m, l in zip(round_medians[method], round_medians["lora"])]
                                 if lora else None),
            "gflops_per_step": r["flops"] / 1e9,
            "flops_vs_lora": r["flops"] / lora_flops if lora_flops else None,
            "ops_per_step": r["ops"],
            "peak_memory_gib": r["peak_memory_bytes"] / 2**30,
            "saved_activations_mib": r["saved_activation_bytes"] / 2**20,
            "trainable_state_mib": r["trainable_state_bytes"] / 2**20,
            "steps": len(r["step_times"]),
        })
    return rows


def ratio_range(ratios) -> str:
    """'lowest–highest' of the per-round ratios ('—' without LoRA, one value for one round)."""
    if not ratios:
        return "—"
    low, high = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
    return low if low == high else f"{low}–{high}"


def markdown(rows, preset_name: str, memory_label: str) -> str:
    p = PRESETS[preset_name]
    lines = [
        f"{preset_name}: {p.model_type} {p.dtype}, batch {p.batch}x{p.length}, {p.device}",
        "",
        f"| method | trainable params | median step (ms) | / floor | / LoRA | / LoRA, each round | GFLOP per step "
        f"| FLOPs / LoRA | ops per step | {memory_label} (GiB) | saved activations (MiB) | trainable state (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda v, digits=2: "—" if v is None else f"{v:.{digits}f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {r['median_step_ms']:.1f} | {fmt(r['vs_floor'])} | "
                     f"{fmt(r['vs_lora'])} | {ratio_range(r['vs_lora_by_round'])} | {r['gflops_per_step']:,.1f} | "
                     f"{fmt(r['flops_vs_lora'], 3)} | {r['ops_per_step']:,} | {r['peak_memory_gib']:.2f} | "
                     f"{r['saved_activations_mib']:.1f} | {r['trainable_state_mib']:.1f} |")
    return "\n".join(lines)


def counted_rows(preset_name: str, methods, device: str) -> dict[str, tuple[int, int]]:
    """{method: (FLOPs, operators)} of one forward and backward pass, with the preset's model shape
    built on `device`; TT layers multiply as they would on the preset's own device."""
    import torch

    from loretta import TTLinear

    preset = replace(PRESETS[preset_name], device=device)
    real_device = torch.device(PRESETS[preset_name].device)
    counts = {}
    for method in methods:
        model = wrap(build_model(preset), method, preset)
        for tt in (m for m in model.modules() if isinstance(m, TTLinear) and m.forward_mode == "auto"):
            tt.forward_mode = "factors" if tt.multiplies_by_factors(real_device) else "matrix"
        model.train()
        ids, labels = make_batch(model, preset)
        forward = lambda: model(input_ids=ids, labels=labels).loss  # noqa: E731
        # a first pass builds what is built once (e.g. LoRETTA_rep's cached initial A0 and B0),
        # as the timed benchmark's warm-up steps do: the count is of a step in steady state
        step_counts(model, forward)
        counts[method] = step_counts(model, forward)
    return counts


def count_only(preset_name: str, methods) -> str:
    """FLOPs and operators of one forward and backward pass per method, without timing. On the meta
    device where the model runs there: no weights and no arithmetic, so any preset's shape (LLaMA-2-7B
    included) is counted on a laptop in seconds; the attention is counted as the meta device's kernel
    choice has it, so totals can differ a little from the device's (llama-small-cpu: +2.5%, the same
    for every method); the ratios agree. Models whose code reads tensor values (DeBERTa's relative
    positions) cannot run there and are counted on the CPU at the preset's shape instead (a real
    warm-up and a counted forward and backward per method: DeBERTa-base at 32x128 took
    ~80 s a method on one core here)."""
    try:
        counts, where = counted_rows(preset_name, methods, "meta"), "meta device"
    except (RuntimeError, NotImplementedError) as error:
        print(f"--flops-only: the meta device cannot run preset {preset_name!r} ({type(error).__name__}: "
              f"{str(error).splitlines()[0]}); counting on the CPU at its shape", file=sys.stderr, flush=True)
        counts, where = counted_rows(preset_name, methods, "cpu"), "CPU"
    preset = PRESETS[preset_name]
    lora = counts.get("lora")
    lines = [f"{preset_name}: {preset.model_type} {preset.dtype}, batch {preset.batch}x{preset.length}, "
             f"one forward and backward pass (counted on the {where}): FLOPs, and operators dispatched "
             "(views excluded)", "",
             "| method | GFLOP per step | FLOPs / LoRA | ops per step | ops beyond LoRA's |", "|---|---:|---:|---:|---:|"]
    for method, (flops, ops) in counts.items():
        lines.append(f"| {method} | {flops / 1e9:,.1f} | {'—' if not lora else f'{flops / lora[0]:.3f}'} | "
                     f"{ops:,} | {'—' if not lora else f'{ops - lora[1]:+,}'} |")
    return "\n".join(lines)


def write_rows(path: str, preset_name: str, rows) -> None:
    """The rows as JSON at `path`, written atomically (a run cut short leaves no partial file)."""
    import os

    with open(path + ".tmp", "w") as f:
        json.dump({"preset": preset_name, "rows": rows}, f, indent=2)
    os.replace(path + ".tmp", path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="deberta-base-cpu", choices=sorted(PRESETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + EXTRA_METHODS)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one worker per method per round)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per worker")
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--flops-only", action="store_true",
                        help="only count each method's FLOPs and operators (no timing): on the meta device "
                             "where the model runs there (no weights), else on the CPU")
    parser.add_argument("--worker", choices=METHODS + EXTRA_METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.preset, args.worker, args.warmup, args.steps)))
        return
    if args.flops_only:
        print(count_only(args.preset, args.methods))
        return
    for name in ("rounds", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    rows = orchestrate(args)
    memory_label = "peak CUDA memory" if PRESETS[args.preset].device == "cuda" else "peak RSS"
    print(markdown(rows, args.preset, memory_label))
    if args.out:
        write_rows(args.out, args.preset, rows)


if __name__ == "__main__":
    main()
