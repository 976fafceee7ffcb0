"""Step time and memory of every PEFT method on one model shape, measured side by side.

    python scripts/bench_methods.py --preset deberta-base-cpu      # CPU, DeBERTa-base shape
    python scripts/bench_methods.py --preset llama-small-cpu       # CPU, small LLaMA shape
    python scripts/bench_methods.py --preset llama2-7b-gpu         # GPU, LLaMA-2-7B shape, bf16, 4x512
    python scripts/bench_methods.py --preset deberta-base-gpu      # GPU, DeBERTa-base, fp32, 32x128
    python scripts/bench_methods.py --preset moe-small-cpu --methods floor lora_experts loretta_rep_experts
                                                                   # CPU, a mixture of experts' expert weights

On a CPU each (method, round) runs in a fresh worker process, so that peak RSS is per method; on a
GPU one worker per round measures the methods in turn (`--per-process`), each model freed before the
next is built and the CUDA peak taken over that method alone: a 7B model's worker pays ~10 s of
imports and CUDA start-up, which one per method would pay 20 times. Rounds interleave the methods so
that drift on a noisy machine hits all of them alike. A method that fails (out of memory, say) is a
row saying so, and the others are still measured; a worker that dies is started again for the
methods after the one it was measuring. `--time-limit` starts no method that would not finish in
time, and `--out` / `--md` are rewritten after every method, so a run cut short keeps its rows.

A step is forward + loss + backward + AdamW step. "floor" is the frozen model with a full backward
pass (the input embeddings require grad) and no weight grads: the cost every method pays before its
own. Weights are random (only shapes matter for speed). Each method's ratio to LoRA is also given
within each round (its range over the rounds shows what the machine's noise can do to a
difference), beside the deterministic arithmetic: the FLOPs of one forward and backward pass
(torch's FlopCounterMode), which no noise touches.

Memory is reported twice: the peak (CUDA allocator, above what the worker held before the method's
model was built; on the CPU the worker's peak RSS, which is noisy), and deterministically what a
method adds to the frozen model: the bytes autograd saves for the backward pass of one forward, and
the trainable state (weight, gradient and AdamW's two moments: 16 bytes per float32 parameter).
The FLOPs, operators and saved bytes are counted once per method (in the first round that measures
it): no round can change them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, replace

METHODS = ("floor", "ft", "lora", "ia3", "adapters", "loretta_adp", "loretta_rep")
# a mixture of experts' expert weights (target_parameters), nothing else: PEFT's LoRA and LoRETTA_rep
EXPERT_METHODS = ("lora_experts", "loretta_rep_experts")
EXPERT_WEIGHTS = ["experts.gate_up_proj", "experts.down_proj"]
# not run by default (memory comparisons): LoRETTA with its layer norms frozen, as LoRA leaves them,
# and with its trainable norms keeping their normalised input instead of recomputing it in backward;
# LoRETTA_adp's projections multiplying by their two TT factors, or by the rebuilt matrix, whatever
# the device's default (tt_forward: factors on a CPU, the matrix on a GPU)
EXTRA_METHODS = ("loretta_adp_frozen_norms", "loretta_rep_frozen_norms",
                 "loretta_adp_stored_norms", "loretta_rep_stored_norms",
                 "loretta_adp_factors", "loretta_adp_matrix") + EXPERT_METHODS


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

TINY_MOE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, vocab_size=100)

PRESETS = {
    # smoke-test sizes (tests/lib/test_bench_script.py)
    "tiny-cpu": Preset("llama", "CAUSAL_LM", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100),
                       2, 16, "float32", "cpu"),
    # the GPU LLaMA preset's dtype at the smoke-test size: the bf16 paths (casts of fp32 adapter weights)
    "tiny-bf16-cpu": Preset("llama", "CAUSAL_LM", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=100),
                            2, 16, "bfloat16", "cpu"),
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
    # a mixture of experts (Qwen3-MoE's layout, two experts per token): the *_experts methods
    "tiny-moe-cpu": Preset("qwen3_moe", "CAUSAL_LM", TINY_MOE, 2, 16, "float32", "cpu"),
    "tiny-moe-bf16-cpu": Preset("qwen3_moe", "CAUSAL_LM", TINY_MOE, 2, 16, "bfloat16", "cpu"),
    "moe-small-cpu": Preset("qwen3_moe", "CAUSAL_LM", dict(hidden_size=512, intermediate_size=1408,
                                                           num_hidden_layers=4, num_attention_heads=8,
                                                           num_key_value_heads=2, head_dim=64, num_experts=16,
                                                           num_experts_per_tok=2, moe_intermediate_size=704,
                                                           vocab_size=32000),
                            4, 128, "float32", "cpu"),
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
        "lora_experts": lambda: LoraConfig(task_type=preset.task, r=8, lora_alpha=16, target_modules=[],
                                           target_parameters=EXPERT_WEIGHTS),
        "loretta_rep_experts": lambda: LorettaRepConfig(task_type=preset.task, target_modules=[],
                                                        target_parameters=EXPERT_WEIGHTS, lora_dropout=0.0),
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


def make_batch(model, preset: Preset):
    """Random token ids, and labels for the preset's task."""
    import torch

    ids = torch.randint(5, model.config.vocab_size, (preset.batch, preset.length), device=preset.device)
    labels = torch.randint(0, 2, (preset.batch,), device=preset.device) if preset.task == "SEQ_CLS" else ids
    return ids, labels


def run_worker(preset_name: str, method: str, warmup: int, steps: int, counts: bool = True) -> dict:
    """One method's measurement: `warmup` steps, then (with `counts`) the bytes saved for backward by
    module type and the FLOPs and operators of a step, then `steps` timed steps."""
    import torch

    preset = PRESETS[preset_name]
    cuda = preset.device == "cuda"
    started = time.perf_counter()
    # what this process still holds from a method before (nothing, or the cuBLAS workspace): the
    # peak below is this method's alone
    at_start = torch.cuda.memory_allocated() if cuda else 0
    torch.manual_seed(0)
    model = wrap(build_model(preset), method, preset)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5) if params else None
    ids, labels = make_batch(model, preset)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
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
    by_type = saved_by_module_type(model, forward) if counts else None
    flops, ops = step_counts(model, forward) if counts else (None, None)
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
        "peak_memory_bytes": peak_memory_bytes(preset.device) - at_start,
        "memory_at_start_bytes": at_start,
        "saved_activation_bytes": None if by_type is None else sum(by_type.values()),
        "saved_by_module_type": by_type,
        "flops": flops,
        "ops": ops,
        # weight, gradient and AdamW's two moments per trainable parameter, in its dtype: 16 bytes in
        # float32 (adapters, masters), 8 for full fine-tuning of a bf16 model
        "trainable_state_bytes": 4 * sum(p.numel() * p.element_size() for p in params),
        "seconds": time.perf_counter() - started,  # the whole measurement, model build included
    }


# a worker's result lines on stdout start with this (libraries may print there too)
RECORD = "@@record "


def failure(method: str, error: BaseException) -> dict:
    """A record for a method whose measurement raised: what went wrong, in a line."""
    import torch

    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return {"method": method, "error": f"out of memory: {first_line}", "oom": True}
    return {"method": method, "error": f"{type(error).__name__}: {first_line}"}


def free_device_memory() -> None:
    """Drop what a measured model left (reference cycles included) before the next one is built."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def serve_methods(methods, measure, stop_at: float | None, expected: dict[str, float]) -> int:
    """The worker side: measure each method in turn (`measure(method) -> record`), printing each record
    on its own line as soon as it is made. A method that would not finish before `stop_at` (its
    `expected` seconds, else the slowest so far here) is reported as skipped. A method that runs out of
    memory is reported and the next one measured in this process; after any other error the worker
    stops (exit status 3: its state may be broken, a CUDA error poisons the process), and the parent
    starts a fresh one for the methods after it."""
    slowest = 0.0
    for method in methods:
        now = time.time()
        if stop_at is not None and now + expected.get(method, slowest) > stop_at:
            print(RECORD + json.dumps({"method": method, "skipped": "time limit"}), flush=True)
            continue
        fatal = False
        try:
            record = measure(method)
        except Exception as error:  # noqa: BLE001 (any failure is this method's row; the others go on)
            traceback.print_exc()
            record = failure(method, error)
            fatal = not record.get("oom")
        free_device_memory()  # after the except block: its traceback no longer holds the model
        slowest = max(slowest, time.time() - now)
        print(RECORD + json.dumps(record), flush=True)
        if fatal:
            return 3
    return 0


def run_worker_group(script: str, args: list[str], methods: list[str], on_record, what: str,
                     stop_at: float | None = None, expected: dict[str, float] | None = None) -> None:
    """Run `script --worker METHOD... ARGS` in fresh processes until every one of `methods` is reported
    to `on_record` (measured, failed or skipped). A worker that dies (killed for memory, a crash)
    costs the method it was measuring a failure row; the methods after it get a new worker."""
    pending = list(methods)
    expected = expected or {}
    while pending:
        if stop_at is not None and time.time() + min(expected.get(m, 0.0) for m in pending) > stop_at:
            for method in pending:
                on_record({"method": method, "skipped": "time limit"})
            return
        extra = [] if stop_at is None else ["--stop-at", str(stop_at),
                                            "--expected", json.dumps({m: expected[m] for m in pending if m in expected})]
        with tempfile.TemporaryFile("w+") as errors:
            proc = subprocess.Popen([sys.executable, script, "--worker", *pending, *args, *extra],
                                    stdout=subprocess.PIPE, stderr=errors, text=True)
            reported = []
            for line in proc.stdout:
                if line.startswith(RECORD):
                    record = json.loads(line[len(RECORD):])
                    reported.append(record["method"])
                    on_record(record)
            status = proc.wait()
            errors.seek(0)
            stderr_tail = errors.read()[-3000:]
        rest = [m for m in pending if m not in reported]
        if status != 0:
            print(f"{what}: worker for {' '.join(pending)} exited with status {status}:\n{stderr_tail}",
                  file=sys.stderr, flush=True)
        if rest and not (status == 3 and reported):  # 3: it stopped after a failure it reported
            lines = [line for line in stderr_tail.strip().splitlines() if line.strip()]
            on_record({"method": rest[0], "error": f"worker died (status {status}): "
                                                   f"{lines[-1][:300] if lines else 'no message'}"})
            rest = rest[1:]
        pending = rest


def run_in_worker_process(script: str, args: list[str], what: str) -> dict:
    """Run `script` with `args` in a fresh Python process and parse the JSON of its last stdout line:
    one process per measured model, so that no measurement inherits another's memory."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def default_per_process(preset_name: str) -> str:
    return "round" if PRESETS[preset_name].device == "cuda" else "method"


def rounds_of_workers(args, script: str, worker_args, on_record, what: str) -> None:
    """Interleaved rounds of workers (one per method, or one per round: args.per_process), each record
    passed to `on_record(round_index, record)`; worker_args(round_index) gives the workers' arguments.
    With args.time_limit, nothing is started that would not end in time (from the seconds each method
    took before)."""
    stop_at = None if not args.time_limit else time.time() + args.time_limit
    expected: dict[str, float] = {}

    def seen(round_index: int, record: dict) -> None:
        if "seconds" in record:
            expected[record["method"]] = max(expected.get(record["method"], 0.0), record["seconds"])
        on_record(round_index, record)

    for round_index in range(args.rounds):
        groups = [[m] for m in args.methods] if args.per_process == "method" else [list(args.methods)]
        for group in groups:
            run_worker_group(script, worker_args(round_index), group, lambda r, i=round_index: seen(i, r),
                             f"{what} (round {round_index + 1})", stop_at, expected)


def orchestrate(args, on_update=None) -> list[dict]:
    """The rows, one per method, from interleaved rounds of workers; `on_update(rows)` after every method."""
    records: dict[str, list[tuple[int, dict]]] = defaultdict(list)

    def on_record(round_index: int, record: dict) -> None:
        records[record["method"]].append((round_index, record))
        method = record["method"]
        if "step_times" in record:
            note = f"median {statistics.median(record['step_times']) * 1e3:8.1f} ms ({record['seconds']:.0f} s)"
        else:
            note = record.get("error") or f"skipped ({record.get('skipped')})"
        print(f"  round {round_index + 1}/{args.rounds} {method:24s} {note}", file=sys.stderr, flush=True)
        if on_update is not None:
            on_update(rows_from(records, args.methods))

    def worker_args(round_index: int) -> list[str]:
        counted = [m for m, rs in records.items() if any(r.get("flops") is not None for _, r in rs)]
        return ["--preset", args.preset, "--warmup", str(args.warmup), "--steps", str(args.steps),
                *(["--no-counts", *counted] if counted else [])]

    rounds_of_workers(args, __file__, worker_args, on_record, "bench_methods")
    return rows_from(records, args.methods)


def adapts_experts(method: str) -> bool:
    """Whether `method` adapts a mixture of experts' expert weights (merged afterwards or not)."""
    return method.removesuffix("_merged") in EXPERT_METHODS


def lora_reference(method: str) -> str:
    """The LoRA a method is compared with: on the same expert weights for the *_experts methods."""
    return "lora_experts" if adapts_experts(method) else "lora"


EXPERTS_NOTE = "The *_experts rows' LoRA is lora_experts (PEFT's LoRA on the same expert weights)."


def rows_from(records: dict[str, list[tuple[int, dict]]], methods) -> list[dict]:
    """One row per method that has a record (measured, or why not), in `methods`' order."""
    measured = {m: [(i, r) for i, r in records.get(m, []) if "step_times" in r] for m in methods}

    def median(method):
        return statistics.median(t for _, r in measured[method] for t in r["step_times"]) if measured[method] else None

    def by_round(method):
        return {i: statistics.median(r["step_times"]) for i, r in measured[method]}

    def first(method, key):
        return next((r[key] for _, r in measured[method] if r.get(key) is not None), None)

    floor = median("floor") if "floor" in measured else None
    rows = []
    for method in methods:
        if not records.get(method):
            continue
        reference = lora_reference(method)
        lora, lora_flops = None, None
        if measured.get(reference):
            lora, lora_flops = median(reference), first(reference, "flops")
        problems = [r.get("error") or f"skipped ({r['skipped']})" for _, r in records[method] if "step_times" not in r]
        if not measured[method]:
            rows.append({"method": method, "error": problems[-1], "steps": 0})
            continue
        m, flops, ops = median(method), first(method, "flops"), first(method, "ops")
        saved, by_type = first(method, "saved_activation_bytes"), first(method, "saved_by_module_type")
        lora_rounds, own_rounds = by_round(reference) if lora else {}, by_round(method)
        rows.append({
            "method": method,
            "trainable_params": measured[method][0][1]["trainable_params"],
            "median_step_ms": m * 1e3,
            "vs_floor": m / floor if floor else None,
            "vs_lora": m / lora if lora else None,
            # the ratio within each round (the methods of a round ran minutes apart): its spread over
            # the rounds shows how much of a difference from LoRA this machine's noise can make
            "vs_lora_by_round": ([own_rounds[i] / lora_rounds[i] for i in sorted(own_rounds) if i in lora_rounds]
                                 if lora else None),
            "gflops_per_step": None if flops is None else flops / 1e9,
            "flops_vs_lora": flops / lora_flops if flops is not None and lora_flops else None,
            "ops_per_step": ops,
            "peak_memory_gib": max(r["peak_memory_bytes"] for _, r in measured[method]) / 2**30,
            "saved_activations_mib": None if saved is None else saved / 2**20,
            "saved_by_module_type": by_type,
            "trainable_state_mib": measured[method][0][1]["trainable_state_bytes"] / 2**20,
            "steps": sum(len(r["step_times"]) for _, r in measured[method]),
            "rounds": len(measured[method]),
            **({"problems": problems} if problems else {}),
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
    count = lambda v: "—" if v is None else f"{v:,}"  # noqa: E731
    notes = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | not measured |" + " — |" * 10)
            notes.append(f"- {r['method']}: {r['error']}")
            continue
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {r['median_step_ms']:.1f} | {fmt(r['vs_floor'])} | "
                     f"{fmt(r['vs_lora'])} | {ratio_range(r['vs_lora_by_round'])} | "
                     f"{'—' if r['gflops_per_step'] is None else format(r['gflops_per_step'], ',.1f')} | "
                     f"{fmt(r['flops_vs_lora'], 3)} | {count(r['ops_per_step'])} | {r['peak_memory_gib']:.2f} | "
                     f"{fmt(r['saved_activations_mib'], 1)} | {r['trainable_state_mib']:.1f} |")
        notes += [f"- {r['method']}, {problem}" for problem in r.get("problems", [])]
    if any(adapts_experts(r["method"]) for r in rows):
        lines += ["", EXPERTS_NOTE]
    if notes:
        lines += ["", "Not measured (or not in every round):", *notes]
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
    lines = [f"{preset_name}: {preset.model_type} {preset.dtype}, batch {preset.batch}x{preset.length}, "
             f"one forward and backward pass (counted on the {where}): FLOPs, and operators dispatched "
             "(views excluded)", "",
             "| method | GFLOP per step | FLOPs / LoRA | ops per step | ops beyond LoRA's |", "|---|---:|---:|---:|---:|"]
    for method, (flops, ops) in counts.items():
        lora = counts.get(lora_reference(method))
        lines.append(f"| {method} | {flops / 1e9:,.1f} | {'—' if not lora else f'{flops / lora[0]:.3f}'} | "
                     f"{ops:,} | {'—' if not lora else f'{ops - lora[1]:+,}'} |")
    return "\n".join(lines)


def write_atomically(path: str, text: str) -> None:
    """`text` at `path`, written atomically (a run cut short leaves the last whole version)."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_rows(path: str, preset_name: str, rows, **extra) -> None:
    """The rows as JSON at `path`, written atomically."""
    write_atomically(path, json.dumps({"preset": preset_name, **extra, "rows": rows}, indent=2))


def add_run_arguments(parser, methods, default_methods, default_rounds: int) -> None:
    """The arguments bench_methods and bench_generate share: methods, rounds, outputs, workers, time."""
    parser.add_argument("--methods", nargs="+", default=list(default_methods), choices=methods)
    parser.add_argument("--rounds", type=int, default=default_rounds, help="interleaved rounds of workers")
    parser.add_argument("--out", help="also write the rows as JSON here (rewritten after every method)")
    parser.add_argument("--md", help="also write the markdown table here (rewritten after every method)")
    parser.add_argument("--per-process", choices=("method", "round"),
                        help="one worker process per method and round (default on a CPU: peak RSS is per "
                             "process) or per round, measuring the methods in turn (default on a GPU)")
    parser.add_argument("--time-limit", type=float,
                        help="seconds: start no method that would not finish by then (from its time in an "
                             "earlier round, else the slowest so far in its worker); the rest are rows saying so")
    # worker side
    parser.add_argument("--worker", nargs="+", choices=methods, help=argparse.SUPPRESS)
    parser.add_argument("--stop-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--expected", type=json.loads, default={}, help=argparse.SUPPRESS)


def check_run_arguments(parser, args, at_least) -> None:
    for name, low in at_least:
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if args.time_limit is not None and args.time_limit <= 0:
        parser.error(f"--time-limit must be positive, got {args.time_limit}")
    if args.per_process is None:
        args.per_process = default_per_process(args.preset)
    moe_presets = sorted(name for name, p in PRESETS.items() if "num_experts" in p.config)
    expert_methods = [m for m in args.methods if adapts_experts(m)]
    if expert_methods and args.preset not in moe_presets:
        parser.error(f"{expert_methods} adapt a mixture of experts' expert weights; preset {args.preset!r} has no "
                     f"experts: use one of {moe_presets}")
    if not args.worker and PRESETS[args.preset].device == "cuda":
        import torch

        if not torch.cuda.is_available():  # else every worker would fail, one at a time
            parser.error(f"preset {args.preset!r} runs on CUDA, which torch {torch.__version__} does not see here")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="deberta-base-cpu", choices=sorted(PRESETS))
    add_run_arguments(parser, METHODS + EXTRA_METHODS, METHODS, default_rounds=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per worker")
    parser.add_argument("--flops-only", action="store_true",
                        help="only count each method's FLOPs and operators (no timing): on the meta device "
                             "where the model runs there (no weights), else on the CPU")
    parser.add_argument("--no-counts", nargs="*", default=[], help=argparse.SUPPRESS)  # methods counted already
    args = parser.parse_args(argv)
    if args.worker:
        measure = lambda method: run_worker(args.preset, method, args.warmup, args.steps,  # noqa: E731
                                            counts=method not in args.no_counts)
        sys.exit(serve_methods(args.worker, measure, args.stop_at, args.expected))
    if args.flops_only:
        print(count_only(args.preset, args.methods))
        return
    check_run_arguments(parser, args, (("rounds", 1), ("steps", 1)))
    memory_label = "peak CUDA memory" if PRESETS[args.preset].device == "cuda" else "peak RSS"

    def save(rows) -> None:
        if args.out:
            write_rows(args.out, args.preset, rows)
        if args.md:
            write_atomically(args.md, markdown(rows, args.preset, memory_label) + "\n")

    rows = orchestrate(args, on_update=save)
    save(rows)
    print(markdown(rows, args.preset, memory_label))


if __name__ == "__main__":
    main()
