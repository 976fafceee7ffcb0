"""The command line: --help, errors for unknown choices, a multirun of two methods, the paper's scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ENV, REPO, TINY, cli, read_results


def test_help_lists_the_choices():
    proc = cli(["--help"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in ("model: ", "task: ", "method: ", "train: ", "experiment: "):
        assert line in out
    for choice in ("deberta-base", "llama2-70b", "minilm", "smollm2", "tiny-bert", "sst2", "squad", "movie_snippets",
                   "loretta_adp", "loretta_rep", "ia3", "bitfit", "glue", "mezo", "table1_deberta"):
        assert choice in out, choice


def test_the_console_script_finds_the_configs_from_any_folder(tmp_path):
    """`loretta-run` (pyproject's console script) is the same command as `python -m loretta.run`."""
    script = Path(sys.executable).parent / "loretta-run"
    proc = subprocess.run([str(script), "model=tiny-bert", "task=sst2", "method=lora", "--cfg", "job"], cwd=tmp_path,
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name: lora" in proc.stdout and "tiny-bert" in proc.stdout


def test_unknown_model_names_the_choices(tmp_path):
    proc = cli(["model=gpt5", "task=sst2", f"output_root={tmp_path}"], timeout=120)
    assert proc.returncode != 0
    assert "gpt5" in proc.stderr and "tiny-bert" in proc.stderr and "deberta-base" in proc.stderr
    assert not list(tmp_path.rglob("results.json"))


def test_multirun_two_methods(tmp_path, kinds):
    task, data_dir, _ = kinds["classification"]
    proc = cli(["-m", "method=lora,loretta_adp", "model=tiny-bert", f"task={task}", f"task.data_dir={data_dir}",
                *TINY, f"output_root={tmp_path}"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for method in ("lora", "loretta_adp"):
        record = read_results(tmp_path / task / "tiny-bert" / method / "seed0")
        assert record["status"] == "completed" and record["method"] == method
    assert (tmp_path / "multirun.yaml").is_file()  # Hydra's sweep record, no timestamped folders
    assert (tmp_path / task / "tiny-bert" / "lora" / "seed0" / ".hydra" / "config.yaml").is_file()


def _dry(script: str, **variables) -> list[str]:
    env = {k: v for k, v in ENV.items() if k not in ("MODEL", "TASK", "MODE", "EPOCH", "BS", "LR", "SEED", "RANK")}
    proc = subprocess.run(["bash", f"scripts/{script}"], cwd=REPO, env={**env, "DRY_RUN": "1", **variables},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def test_bert_script_keeps_the_paper_interface():
    sweep = _dry("run_all_bert_exp.sh")
    assert [line.split("loretta.run ")[1] for line in sweep] == ["-m experiment=table1_deberta",
                                                                "-m experiment=table1_roberta"]
    [one] = _dry("run_all_bert_exp.sh", MODEL="microsoft/deberta-base", TASK="SST2", MODE="loretta_rep", EPOCH="3",
                 BS="16", LR="5e-4", DEVICE="1", RANK="8")
    assert one.split("loretta.run ")[1] == ("model=deberta-base task=sst2 method=loretta_rep train=glue train.epochs=3 "
                                           "train.batch_size=16 seed=0 train.lr=5e-4 method.tensor_rank=8")
    [multi] = _dry("run_all_bert_exp.sh", TASK="SST2,RTE", MODE="lora")
    assert " -m " in multi and "task=sst2,rte" in multi and "model=deberta-base" in multi


def test_large_script_keeps_the_paper_interface():
    lines = _dry("run_all_large_exp.sh")
    assert len(lines) == 7 + 4 + 2 and all(" -m " in line for line in lines)
    assert "model=llama2-7b task=cb method=ft,adapters,lora,prefix,ia3,loretta_rep,loretta_adp" in lines[0]
    [drop] = _dry("run_all_large_exp.sh", MODEL="meta-llama/Llama-2-13b-hf", TASK="DROP", MODE="lora", BS="8")
    assert "model=llama2-13b task=drop method=lora train=mezo" in drop
    assert "train.batch_size=1 train.grad_accum=8" in drop  # the paper script's DROP setting


def test_bert_script_runs_the_app(tmp_path, kinds):
    """The script really calls the Hydra app (a tiny run through it)."""
    task, data_dir, _ = kinds["classification"]
    env = {**ENV, "MODEL": "tiny-bert", "TASK": "SST2", "MODE": "bitfit", "EPOCH": "1", "BS": "4", "LR": "1e-3",
           "PYTHON": os.environ.get("PYTHON_FOR_TESTS", __import__("sys").executable),
           "DATA_DIR": str(data_dir), "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", "scripts/run_all_bert_exp.sh", "train.num_train=8", "train.num_dev=8",
                           "train.num_test=8", "train.max_length=32", "logger.wandb=off", "train.progress_bar=false"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_results(tmp_path / "sst2" / "tiny-bert" / "bitfit" / "seed0")
    assert record["config"]["train"]["epochs"] == 1 and record["lr"] == 1e-3


def test_two_processes(tmp_path, kinds):
    """The distributed path (what `accelerate launch` runs): 2 CPU processes with gloo, an odd number of
    evaluation examples gathered across them, one results.json written by the main process."""
    import sys
    from pathlib import Path

    task, data_dir, extra = kinds["generation"]
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "loretta.run", "model=tiny-llama",
                           f"task={task}", "method=lora", f"task.data_dir={data_dir}", *extra, *TINY,
                           "train.num_dev=7", "train.num_test=7", "train.eval_batch_size=2", f"output_root={tmp_path}"],
                          cwd=REPO, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 x cpu" in proc.stdout
    record = read_results(tmp_path / task / "tiny-llama" / "lora" / "seed0")
    assert record["num_eval_examples"] == 7 and "f1" in record["metrics"]


def test_bad_value_on_the_command_line(tmp_path):
    proc = cli(["model=tiny-bert", "train.precision=fp8", f"output_root={tmp_path}"], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "loretta-run: error: train.precision='fp8' is not one of fp32, bf16, fp16"
    assert not any(tmp_path.iterdir())  # the run folder Hydra made before the error is gone


@pytest.mark.parametrize("args, error", [
    (["train.precision=fp8"], "train.precision='fp8' is not one of"),
    ([], "already holds a completed run (results.json: accuracy 0.5000). Pass resume=true"),
    # `make run ARGS=...` passes overwrite=true: a value found bad while the run is built replaces nothing
    (["overwrite=true", "method.r=0", "task.data_dir={sst2}"], "method 'lora'"),
    (["overwrite=true", "task.split_validation=5000", "task.data_dir={sst2}"], "split_validation must be an integer"),
])
def test_a_failed_or_refused_run_leaves_an_earlier_runs_folder_as_it_was(tmp_path, args, error, request):
    """Neither the clean-up after an error nor Hydra's record of the new run touches an earlier run's files."""
    if any("{sst2}" in arg for arg in args):
        args = [arg.format(sst2=request.getfixturevalue("sst2_small")) for arg in args]
    earlier = tmp_path / "sst2" / "tiny-bert" / "lora" / "seed0"
    (earlier / ".hydra").mkdir(parents=True)
    files = {"results.json": '{"status": "completed", "primary_metric": "accuracy", "metrics": {"accuracy": 0.5}}',
             ".hydra/config.yaml": "train:\n  precision: fp32\n", "run.log": "the earlier run\n"}
    for name, text in files.items():
        (earlier / name).write_text(text)
    proc = cli(["model=tiny-bert", "task=sst2", "method=lora", f"output_root={tmp_path}", *args], timeout=120)
    assert proc.returncode == 2 and error in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert {str(p.relative_to(earlier)) for p in earlier.rglob("*") if p.is_file()} == set(files)
    assert all((earlier / name).read_text() == text for name, text in files.items())


def test_library_import_stays_light():
    """`import loretta` must not pull in the runner's dependencies."""
    code = ("import sys, loretta; bad = [m for m in ('hydra', 'wandb', 'datasets', 'tasks', "
            "'loretta.experiment') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([__import__("sys").executable, "-c", code], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_make_run_runs_again_unless_told_to_resume():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from default_experiment import sweep_args
    finally:
        sys.path.remove(str(REPO / "scripts"))
    assert sweep_args([]) == (["experiment=default", "overwrite=true"], "default")
    assert sweep_args(["train.epochs=5", "resume=true"]) == (["experiment=default", "train.epochs=5", "resume=true"],
                                                            "default")
    assert sweep_args(["experiment=table1_deberta", "overwrite=false"])[0] == ["experiment=table1_deberta",
                                                                             "overwrite=false"]
