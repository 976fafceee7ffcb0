"""The benchmark script runs end to end and prints a row per method (timings are not asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_methods.py"


def test_bench_methods_prints_a_row_per_method(tmp_path):
    out = tmp_path / "bench.json"
    # one worker process per round: a process per method (the CPU default) would start ten processes
    # (test_device_paths checks that grouping with a stand-in worker)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "tiny-cpu", "--rounds", "2", "--steps", "1", "--warmup", "0",
         "--per-process", "round", "--methods", "floor", "lora", "ia3", "loretta_adp", "loretta_rep",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["floor", "lora", "ia3", "loretta_adp", "loretta_rep"]
    by_method = {r["method"]: r for r in rows}
    assert by_method["floor"]["trainable_params"] == 0
    assert by_method["floor"]["vs_floor"] == 1.0 and by_method["lora"]["vs_lora"] == 1.0
    # FLOPs (deterministic): LoRETTA_adp's adapters add matrix products, IA3 only elementwise scaling
    assert by_method["lora"]["flops_vs_lora"] == 1.0
    # operators dispatched (deterministic): the floor's frozen model is what every method adds to
    assert all(r["ops_per_step"] > by_method["floor"]["ops_per_step"] > 0 for r in rows if r["method"] != "floor")
    assert f"| {by_method['lora']['ops_per_step']:,} |" in next(
        line for line in proc.stdout.splitlines() if line.startswith("| lora |"))
    assert by_method["loretta_adp"]["gflops_per_step"] > by_method["ia3"]["gflops_per_step"] > 0
    # one ratio to LoRA per round, printed as their range
    assert by_method["lora"]["vs_lora_by_round"] == [1.0, 1.0]
    assert all(len(r["vs_lora_by_round"]) == 2 and min(r["vs_lora_by_round"]) > 0 for r in rows)
    adp_row = next(line for line in proc.stdout.splitlines() if line.startswith("| loretta_adp |"))
    low, high = sorted(by_method["loretta_adp"]["vs_lora_by_round"])
    assert adp_row.split("|")[6].strip() in (f"{low:.2f}–{high:.2f}", f"{low:.2f}")
    assert 0 < by_method["loretta_rep"]["trainable_params"] < by_method["lora"]["trainable_params"]
    assert "| loretta_adp |" in proc.stdout
    # deterministic memory: every method saves at least the floor's activations; state is 16 B/param
    assert all(r["saved_activations_mib"] >= by_method["floor"]["saved_activations_mib"] > 0 for r in rows)
    assert by_method["lora"]["trainable_state_mib"] * 2**20 == 16 * by_method["lora"]["trainable_params"]


def test_bench_methods_compares_expert_weights_with_lora_on_the_same_weights(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "tiny-moe-cpu", "--rounds", "1", "--steps", "1", "--warmup", "0",
         "--per-process", "round", "--methods", "floor", "lora_experts", "loretta_rep_experts", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_method = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(by_method) == ["floor", "lora_experts", "loretta_rep_experts"]
    lora, rep = by_method["lora_experts"], by_method["loretta_rep_experts"]
    assert lora["vs_lora"] == 1.0 and lora["flops_vs_lora"] == 1.0
    assert rep["vs_lora"] == pytest.approx(rep["median_step_ms"] / lora["median_step_ms"])
    # per expert: LoRA's r x (in + out) against two small TT factors (and the trainable norms)
    assert 0 < rep["trainable_params"] < lora["trainable_params"]
    assert "The *_experts rows' LoRA is lora_experts" in proc.stdout


def test_activation_memory_renders_what_the_bench_measured(tmp_path):
    out = tmp_path / "bench.json"
    rows = [{"method": "lora", "saved_by_module_type": {"Linear": 2 * 2**20, "LlamaMLP": 2**20}},
            {"method": "ft", "error": "out of memory: ..."}]
    out.write_text(json.dumps({"preset": "tiny-cpu", "rows": rows}))
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "activation_memory.py"), "--from-bench", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "| module type | lora |" in lines and "| Linear | 2.0 |" in lines and "| **total** | **3.0** |" in lines
    assert lines[-1] == "Not measured: ft"


def test_activation_memory_breaks_the_saved_bytes_down_by_module_type():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "activation_memory.py"), "--preset", "tiny-cpu",
         "--methods", "floor", "loretta_adp"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "| module type | floor | loretta_adp |" in lines
    tt_row = next(line for line in lines if line.startswith("| TTLinear |"))
    assert tt_row.split("|")[2].strip() == "—" and tt_row.split("|")[3].strip() != "—"  # only LoRETTA has TT layers
    assert lines[-1].startswith("| **total** |")


def test_flops_only_counts_on_the_meta_device_and_names_models_that_cannot_run_there():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "tiny-cpu", "--flops-only", "--methods", "floor", "lora", "ia3",
         "loretta_adp"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in proc.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    assert rows["lora"] == "1.000" and float(rows["loretta_adp"]) > 1 > float(rows["ia3"])
    assert "counted on the meta device" in proc.stdout
    # DeBERTa's relative positions read tensor values: counted on the CPU instead, and said so
    proc = subprocess.run([sys.executable, str(SCRIPT), "--preset", "tiny-deberta-cpu", "--flops-only", "--methods",
                           "lora", "loretta_rep"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the meta device cannot run preset 'tiny-deberta-cpu'" in proc.stderr
    assert "counted on the CPU" in proc.stdout
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in proc.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    assert rows["lora"][1] == "1.000" and rows["lora"][3] == "+0"
    assert float(rows["loretta_rep"][1]) > 1 and int(rows["loretta_rep"][3].replace(",", "")) > 0


def test_bench_methods_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--preset", "nope"], capture_output=True, text=True)
    assert proc.returncode != 0 and "invalid choice: 'nope'" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--preset", "tiny-cpu", "--methods", "lora", "lora_experts"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and ("['lora_experts'] adapt a mixture of experts' expert weights; preset 'tiny-cpu' "
                                     "has no experts: use one of ['moe-small-cpu', 'tiny-moe-bf16-cpu', "
                                     "'tiny-moe-cpu']") in proc.stderr


def _probe_wheel(folder):
    """A minimal pure-Python wheel (distribution `loretta_probe` 0.1)."""
    import zipfile

    folder.mkdir()
    info = "loretta_probe-0.1.dist-info"
    files = {"loretta_probe/__init__.py": "",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: loretta_probe\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / "loretta_probe-0.1-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return folder


def test_gpu_checks_script_runs_its_steps(tmp_path):
    """The prepared GPU command (scripts/gpu_checks.sh), on the CPU smoke preset, with a wheel to
    install first (as the pinned transformers and peft travel to the device machine)."""
    out = tmp_path / "out"
    env = {**os.environ, "PRESETS": "tiny-cpu", "ROUNDS": "1", "METHODS": "floor lora loretta_rep", "OUT": str(out),
           "GENERATE_PRESETS": "tiny-cpu", "GENERATE_METHODS": "base loretta_rep",
           "PYTHON": sys.executable, "WHEELS": str(_probe_wheel(tmp_path / "wheels"))}
    proc = subprocess.run(["bash", str(SCRIPT.parent / "gpu_checks.sh")], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = (out / "gpu.txt").read_text()
    assert "torch" in log and "bench tiny-cpu:" in log and "generate tiny-cpu:" in log
    assert "wheels: loretta_probe 0.1" in log  # installed and first on the path
    assert "round 1/1 loretta_rep" in log  # the workers' progress
    assert "rows not measured: 0" in log
    bench = (out / "tiny-cpu.md").read_text()
    assert "| loretta_rep |" in bench and "| **total** |" in bench  # the step times, then the activation memory
    assert json.loads((out / "tiny-cpu.json").read_text())["preset"] == "tiny-cpu"
    assert "| loretta_rep |" in (out / "generate_tiny-cpu.md").read_text()
    assert json.loads((out / "generate_tiny-cpu.json").read_text())["rows"][1]["method"] == "loretta_rep"
    # the device machine returns eight files at most; nothing partial is left in $OUT
    assert sorted(p.name for p in out.iterdir()) == ["generate_tiny-cpu.json", "generate_tiny-cpu.md", "gpu.txt",
                                                     "tiny-cpu.json", "tiny-cpu.md"]
    assert "| **total** |" in proc.stdout  # the tables end the output, which the device returns the tail of


def test_gpu_checks_script_skips_the_steps_its_time_budget_leaves_no_time_for(tmp_path):
    env = {**os.environ, "PRESETS": "tiny-cpu", "GENERATE_PRESETS": "tiny-cpu", "OUT": str(tmp_path),
           "PYTHON": sys.executable, "WHEELS": str(tmp_path / "none"), "BUDGET_S": "1"}
    proc = subprocess.run(["bash", str(SCRIPT.parent / "gpu_checks.sh")], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 1
    log = (tmp_path / "gpu.txt").read_text()
    assert "bench tiny-cpu: skipped" in log and "generate tiny-cpu: skipped" in log


def test_bench_layouts_prints_a_row_per_rank_and_refuses_bad_sizes():
    script = SCRIPT.parent / "bench_layouts.py"
    run = lambda *args: subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,  # noqa: E731
                                       timeout=300)
    proc = run("--tokens", "16", "--width", "32", "--ranks", "2", "4", "--rounds", "1", "--steps", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["2", "4"]
    assert all("(1.00×)" in row.split("|")[2] for row in rows)  # the reference column
    bad = run("--ranks", "0")
    assert bad.returncode != 0 and "--ranks must all be at least 1, got [0]" in bad.stderr


def test_counts_are_of_a_step_in_steady_state():
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_methods as bench

    preset = bench.PRESETS["tiny-cpu"]
    model = bench.wrap(bench.build_model(preset), "loretta_rep", preset).train()
    ids, labels = bench.make_batch(model, preset)
    forward = lambda: model(input_ids=ids, labels=labels).loss  # noqa: E731
    first, second = bench.step_counts(model, forward), bench.step_counts(model, forward)
    assert first[1] > second[1]  # the first pass also builds LoRETTA_rep's cached initial A0 and B0
    assert bench.step_counts(model, forward) == second
    assert bench.counted_rows("tiny-cpu", ["loretta_rep"], "cpu") == {"loretta_rep": second}


def test_bench_generate_compares_expert_weights_with_lora_on_the_same_weights(tmp_path):
    out = tmp_path / "generate.json"
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "bench_generate.py"), "--preset", "tiny-moe-cpu",
                           "--rounds", "1", "--steps", "1", "--prompt-length", "8", "--new-tokens", "3",
                           "--per-process", "round", "--out", str(out), "--methods", "base", "lora_experts",
                           "loretta_rep_experts", "loretta_rep_experts_merged"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["base", "lora_experts", "loretta_rep_experts", "loretta_rep_experts_merged"]
    assert rows["lora_experts"]["vs_lora"] == 1.0
    assert rows["loretta_rep_experts"]["vs_lora"] == pytest.approx(
        rows["loretta_rep_experts"]["ms_per_token"] / rows["lora_experts"]["ms_per_token"])
    # merged: the stock model again (W + dW no longer made at every token)
    assert rows["loretta_rep_experts_merged"]["ops_per_token"] == rows["base"]["ops_per_token"]
    assert rows["loretta_rep_experts"]["ops_per_token"] > rows["base"]["ops_per_token"]
    assert "The *_experts rows' LoRA is lora_experts" in proc.stdout


def test_bench_generate_prints_a_row_per_method_and_refuses_bad_arguments(tmp_path):
    script = SCRIPT.parent / "bench_generate.py"
    out = tmp_path / "generate.json"
    proc = subprocess.run([sys.executable, str(script), "--preset", "tiny-cpu", "--rounds", "1", "--steps", "1",
                           "--prompt-length", "8", "--new-tokens", "3", "--per-process", "round", "--out", str(out),
                           "--methods", "base", "lora", "loretta_adp", "loretta_rep_merged"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["base", "lora", "loretta_adp", "loretta_rep_merged"]
    assert rows["base"]["vs_base"] == 1.0 and rows["lora"]["vs_lora"] == 1.0 and rows["base"]["trainable_params"] == 0
    assert all(r["prefill_ms"] > 0 for r in rows.values())  # (per token: a difference, which noise can flip)
    # deterministic: a merged LoRETTA_rep is the stock model again; the adapters add operators
    assert rows["loretta_rep_merged"]["ops_per_token"] == rows["base"]["ops_per_token"]
    assert rows["loretta_rep_merged"]["trainable_params"] > 0
    assert all(rows[m]["ops_per_token"] > rows["base"]["ops_per_token"] for m in ("lora", "loretta_adp"))
    assert rows["loretta_rep_merged"]["python_calls_per_token"] == rows["base"]["python_calls_per_token"]
    assert rows["loretta_adp"]["python_calls_per_token"] > rows["lora"]["python_calls_per_token"] > rows["base"][
        "python_calls_per_token"]
    assert f"| {rows['loretta_adp']['ops_per_token']:,} | {rows['loretta_adp']['python_calls_per_token']:,} |" in next(
        line for line in proc.stdout.splitlines() if line.startswith("| loretta_adp |"))
    assert not list(tmp_path.glob("*.tmp"))
    for bad, message in ((["--new-tokens", "1"], "--new-tokens must be at least 2, got 1"),
                         (["--preset", "deberta-base-cpu"], "invalid choice: 'deberta-base-cpu'"),
                         (["--preset", "tiny-cpu", "--methods", "loretta_rep_experts_merged"],
                          "['loretta_rep_experts_merged'] adapt a mixture of experts' expert weights")):
        proc = subprocess.run([sys.executable, str(script), *bad], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-500:]
