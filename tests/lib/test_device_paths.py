"""What the GPU run (scripts/gpu_checks.sh) does that the CPU benchmarks never did, checked on a CPU:

- every benchmarked method in a bf16 model (the LLaMA-2-7B preset's dtype): dense adapters used to
  fail there, a float32 weight against bf16 activations;
- no tensor made on another device than the model's, and no matrix product of mixed dtypes (a CUDA
  kernel refuses both), on the meta device: a model there runs every operator without arithmetic, so
  a tensor made without `device=` shows up as a CPU tensor, and TT layers take the path they take on
  a GPU (tt_forward="auto" rebuilds the matrix off the CPU);
- the worker handling that keeps one failing method (out of memory, a dead worker) from costing the
  others their rows, and the time limit.
"""

import argparse
import json
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import loretta  # noqa: F401 (imported here, not first inside a function holding a model: an import's
# logged warning, kept by pytest with its traceback, would keep that function's frame and model alive)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import bench_generate  # noqa: E402
import bench_methods as bench  # noqa: E402

# on the LLaMA presets; the expert-weight methods need a mixture of experts (tiny-moe-bf16-cpu)
ALL_METHODS = bench.METHODS + tuple(m for m in bench.EXTRA_METHODS if m not in bench.EXPERT_METHODS)
# matrix products: their operands must share a dtype on a GPU (the meta device does not check)
PRODUCTS = {"aten.mm.default", "aten.addmm.default", "aten.bmm.default", "aten.baddbmm.default",
            "aten.linear.default", "aten.matmul.default", "aten.addmv.default", "aten.mv.default"}


class DeviceAudit(TorchDispatchMode):
    """Records every operator that touches a tensor off `device` (beyond 0-dim ones, which CUDA
    kernels take as scalars, e.g. AdamW's step count) or multiplies matrices of two dtypes."""

    def __init__(self, device: str):
        super().__init__()
        self.device, self.off_device, self.mixed_dtypes = device, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        self.off_device += [(str(func), str(t.device), tuple(t.shape)) for t in tensors
                            if t.device.type != self.device and t.dim() > 0]
        if str(func) in PRODUCTS and len({t.dtype for t in tensors if t.is_floating_point()}) > 1:
            self.mixed_dtypes.append((str(func), [t.dtype for t in tensors]))
        return out


def _train_eval_decode(model, preset, steps: int = 2) -> None:
    """Training steps (AdamW included), then an evaluation forward and decode steps on a KV cache."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3) if params else None
    ids, labels = bench.make_batch(model, preset)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, labels=labels).loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        cache = bench_generate.kv_cache(model(input_ids=ids, use_cache=True))
        for _ in range(2):  # the second reuses what the first held
            model(input_ids=ids[:, -1:], **cache, use_cache=True)


@pytest.mark.parametrize("method", [*ALL_METHODS, "loretta_rep_merged"])
def test_no_tensor_leaves_the_models_device_and_products_share_a_dtype(method):
    preset = replace(bench.PRESETS["tiny-bf16-cpu"], device="meta")
    model = bench.build_model(preset)
    if method == "loretta_rep_merged":
        model = bench.wrap(model, "loretta_rep", preset).merge_and_unload()
    else:
        model = bench.wrap(model, method, preset)
    audit = DeviceAudit("meta")
    with audit:
        _train_eval_decode(model, preset)
    assert not audit.off_device, audit.off_device[:5]
    assert not audit.mixed_dtypes, audit.mixed_dtypes[:5]


def test_expert_weights_stay_on_the_models_device_in_one_dtype():
    """LoRETTA_rep on a bf16 mixture of experts' weights (float32 cores): W + dW is made on the weight's
    device, in its dtype. (PEFT's LoRA there does not run on the meta device: 'unsupported scalarType'.)"""
    preset = replace(bench.PRESETS["tiny-moe-bf16-cpu"], device="meta")
    model = bench.wrap(bench.build_model(preset), "loretta_rep_experts", preset)
    audit = DeviceAudit("meta")
    with audit:
        _train_eval_decode(model, preset)
    assert not audit.off_device, audit.off_device[:5]
    assert not audit.mixed_dtypes, audit.mixed_dtypes[:5]


@pytest.mark.parametrize("method", ["loretta_adp", "loretta_adp_factors", "loretta_rep", "adapters"])
def test_what_tt_layers_hold_follows_the_model_to_another_device(method):
    """Built, run (matrices, factors and the initial cores' rebuilds held) and only then moved, as
    `model.to("cuda")` after loading: nothing held from before the move is used after it."""
    preset = bench.PRESETS["tiny-bf16-cpu"]
    model = bench.wrap(bench.build_model(preset), method, preset)
    _train_eval_decode(model, preset, steps=1)
    model.to("meta")
    audit = DeviceAudit("meta")
    with audit:
        _train_eval_decode(model, replace(preset, device="meta"), steps=1)
    assert not audit.off_device, audit.off_device[:5]


def test_the_audit_sees_a_product_of_mixed_dtypes():
    audit = DeviceAudit("meta")
    with audit:
        torch.nn.functional.linear(torch.ones(2, 4, dtype=torch.bfloat16, device="meta"), torch.ones(3, 4, device="meta"))
        torch.ones(3) + 1  # made on the CPU
    assert audit.mixed_dtypes and audit.off_device


def test_dense_adapters_train_in_a_half_precision_model():
    """tensorized=False in a bf16 model: float32 weights (the optimizer's), used in bf16, as TT layers do."""
    from loretta import LorettaAdpConfig, get_peft_model
    from loretta.adp.layer import DenseAdapterLinear

    preset = bench.PRESETS["tiny-bf16-cpu"]
    model = get_peft_model(bench.build_model(preset), LorettaAdpConfig(task_type="CAUSAL_LM", tensorized=False))
    adapters = [m for m in model.modules() if isinstance(m, DenseAdapterLinear)]
    assert adapters and all(m.weight.dtype == torch.float32 for m in adapters)
    ids, labels = bench.make_batch(model, preset)
    out = model(input_ids=ids, labels=labels)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert all(m.weight.grad is not None and m.weight.grad.dtype == torch.float32 for m in adapters)
    # in float32 it is an nn.Linear's forward exactly
    layer = DenseAdapterLinear(4, 3)
    x = torch.randn(2, 4)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_every_benchmarked_method_runs_in_bf16_in_one_worker_per_round(tmp_path):
    """The GPU run's way, end to end on a CPU: bf16, one worker measuring the methods in turn."""
    out = tmp_path / "bench.json"
    bench.main(["--preset", "tiny-bf16-cpu", "--rounds", "1", "--steps", "1", "--warmup", "1", "--per-process",
                "round", "--methods", *ALL_METHODS, "--out", str(out), "--md", str(tmp_path / "bench.md")])
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == list(ALL_METHODS)
    assert not [r for r in rows if "error" in r or "problems" in r]
    assert all(r["saved_by_module_type"] and r["ops_per_step"] > 0 for r in rows)
    # AdamW keeps its moments in each parameter's dtype: bf16 weights (full fine-tuning) 8 bytes each,
    # float32 adapters 16
    by_method = {r["method"]: r for r in rows}
    assert by_method["ft"]["trainable_state_mib"] * 2**20 == 8 * by_method["ft"]["trainable_params"]
    # the expert-weight methods, on a bf16 mixture of experts
    experts = ["floor", *bench.EXPERT_METHODS]
    bench.main(["--preset", "tiny-moe-bf16-cpu", "--rounds", "1", "--steps", "1", "--warmup", "1", "--per-process",
                "round", "--methods", *experts, "--out", str(out), "--md", str(tmp_path / "bench.md")])
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == experts and not [r for r in rows if "error" in r or "problems" in r]
    assert by_method["lora"]["trainable_state_mib"] * 2**20 == 16 * by_method["lora"]["trainable_params"]
    assert "Not measured" not in (tmp_path / "bench.md").read_text()
    out = tmp_path / "generate.json"
    bench_generate.main(["--preset", "tiny-bf16-cpu", "--rounds", "1", "--steps", "1", "--prompt-length", "4",
                         "--new-tokens", "2", "--per-process", "round", "--methods", *bench_generate.METHODS,
                         "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == list(bench_generate.METHODS) and not [r for r in rows if "error" in r]


def test_a_method_that_runs_out_of_memory_is_a_row_and_the_next_one_is_measured(capsys):
    def measure(method):
        if method == "big":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        if method == "broken":
            raise ValueError("a bug")
        return {"method": method, "step_times": [0.1], "seconds": 0.0}

    status = bench.serve_methods(["a", "big", "b", "broken", "c"], measure, None, {})
    records = [json.loads(line[len(bench.RECORD):]) for line in capsys.readouterr().out.splitlines()
               if line.startswith(bench.RECORD)]
    assert [r["method"] for r in records] == ["a", "big", "b", "broken"]  # stops after another error
    assert records[1]["oom"] and records[1]["error"].startswith("out of memory: CUDA out of memory")
    assert records[3]["error"] == "ValueError: a bug" and status == 3
    # a method that would end after the time limit is not started
    bench.serve_methods(["a", "b"], measure, time.time() + 5, {"b": 60})
    records = [json.loads(line[len(bench.RECORD):]) for line in capsys.readouterr().out.splitlines()
               if line.startswith(bench.RECORD)]
    assert records == [{"method": "a", "step_times": [0.1], "seconds": 0.0}, {"method": "b", "skipped": "time limit"}]


FAKE_WORKER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {scripts!r})
    from bench_methods import RECORD
    methods = sys.argv[sys.argv.index("--worker") + 1:]
    methods = methods[:next((i for i, a in enumerate(methods) if a.startswith("--")), len(methods))]
    for method in methods:
        if method == "dies":
            print("killed for memory", file=sys.stderr, flush=True)
            os._exit(137)
        if method == "fails":
            print(RECORD + json.dumps({{"method": method, "error": "ValueError: a bug"}}), flush=True)
            sys.exit(3)
        print("a library's line on stdout")
        print(RECORD + json.dumps({{"method": method, "step_times": [0.1], "pid": os.getpid()}}), flush=True)
""")


def test_a_worker_that_dies_costs_only_the_method_it_was_measuring(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER.format(scripts=str(SCRIPTS)))
    records = []
    bench.run_worker_group(str(script), [], ["a", "dies", "b", "fails", "c"], records.append, "test")
    assert [r["method"] for r in records] == ["a", "dies", "b", "fails", "c"]
    assert records[1]["error"] == "worker died (status 137): killed for memory"
    assert records[3]["error"] == "ValueError: a bug"
    # three workers: the first until it died, one until the reported failure, one for the rest
    assert records[0]["pid"] != records[2]["pid"] != records[4]["pid"]
    records.clear()
    bench.run_worker_group(str(script), [], ["a", "b"], records.append, "test", stop_at=time.time() + 5,
                           expected={"a": 60, "b": 60})
    assert records == [{"method": "a", "skipped": "time limit"}, {"method": "b", "skipped": "time limit"}]


@pytest.mark.parametrize("per_process", ["method", "round"])
def test_rounds_interleave_the_methods_in_a_process_per_method_or_per_round(tmp_path, per_process):
    """On a CPU each method runs in a process of its own (peak RSS is per process); on a GPU a round's
    methods share one (a process start costs more than a model build there)."""
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER.format(scripts=str(SCRIPTS)))
    args = argparse.Namespace(rounds=2, methods=["a", "b", "c"], per_process=per_process, time_limit=None)
    seen = []
    bench.rounds_of_workers(args, str(script), lambda round_index: [], lambda i, r: seen.append((i, r)), "test")
    assert [(i, r["method"]) for i, r in seen] == [(0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b"), (1, "c")]
    pids = [r["pid"] for _, r in seen]
    assert len(set(pids)) == (6 if per_process == "method" else 2)


def test_rows_show_what_was_not_measured_and_compare_rounds_that_both_ran():
    ok = lambda m, t, **kw: {"method": m, "step_times": [t], "trainable_params": 1, "peak_memory_bytes": 0,  # noqa: E731
                             "trainable_state_bytes": 16, "flops": 10, "ops": 5, "saved_activation_bytes": 2**20,
                             "saved_by_module_type": {"Linear": 2**20}, **kw}
    records = {"lora": [(0, ok("lora", 1.0)), (1, ok("lora", 2.0))],
               "ft": [(0, {"method": "ft", "error": "out of memory: ...", "oom": True})],
               "loretta_rep": [(0, {"method": "loretta_rep", "skipped": "time limit"}), (1, ok("loretta_rep", 3.0))]}
    rows = {r["method"]: r for r in bench.rows_from(records, ["floor", "ft", "lora", "loretta_rep"])}
    assert "floor" not in rows and rows["ft"]["error"] == "out of memory: ..."
    assert rows["loretta_rep"]["vs_lora_by_round"] == [1.5]  # round 2 against round 2, not round 1
    assert rows["loretta_rep"]["problems"] == ["skipped (time limit)"]
    text = bench.markdown(list(rows.values()), "tiny-cpu", "peak RSS")
    assert "| ft | not measured |" in text and "- ft: out of memory: ..." in text
    assert "- loretta_rep, skipped (time limit)" in text


def _models_alive() -> int:
    import gc

    from transformers import LlamaForCausalLM

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, LlamaForCausalLM))


def test_a_worker_frees_each_model_before_the_next_also_after_a_failure(capsys):
    """One worker measures a round's methods in turn on a GPU: a model left alive (a cycle, a cache, a
    failure's traceback) would add 13 GB of a 7B model to every method after it."""
    before = _models_alive()

    def measure(method):
        if method == "oom":
            model = bench.build_model(bench.PRESETS["tiny-bf16-cpu"])  # noqa: F841 (held by the traceback)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        if method == "merged":
            return bench_generate.run_worker("tiny-bf16-cpu", "loretta_rep_merged", 1, 4, 2, 1)
        return bench.run_worker("tiny-bf16-cpu", method, warmup=1, steps=1)

    for method in ["ft", "adapters", "loretta_adp", "loretta_rep_stored_norms", "oom", "merged"]:
        assert bench.serve_methods([method], measure, None, {}) == 0
        assert _models_alive() == before, method
    capsys.readouterr()
