"""A run's folder holds one run: a second run into it is refused unless told to resume or overwrite; a
resumed run keeps its settings and its metrics log; SIGTERM cleans up as an error does."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from .helpers import ENV, REPO, TINY, die_after_checkpoint, run

ARGS = ["model=tiny-bert", "task=sst2", "method=loretta_adp", "train.max_steps=4", "train.eval_every=2"]


def _folder(root):
    return root / "sst2" / "tiny-bert" / "loretta_adp" / "seed0"


def _steps(folder) -> list:
    return [(line["step"], sorted(line)) for line in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())]


def test_a_second_run_into_a_finished_folder_is_refused_unless_told(kinds, tmp_path):
    from loretta.experiment import ConfigError

    args = [*ARGS, f"task.data_dir={kinds['classification'][1]}"]
    first = run(args, tmp_path)
    folder = _folder(tmp_path)
    record, log = (folder / "results.json").read_text(), (folder / "metrics.jsonl").read_text()
    # e.g. a sweep over a setting that is not in the folder's name: both values would share the folder
    with pytest.raises(ConfigError, match=r"already holds a completed run \(results.json: accuracy .*variant=_<name>"):
        run([*args, "train.lr=1e-2"], tmp_path)
    assert (folder / "results.json").read_text() == record and (folder / "metrics.jsonl").read_text() == log
    assert run([*args, "resume=true"], tmp_path) == first  # left as it is
    # ... only with its settings: a sweep over train.lr with resume=true is not "done" for every value
    with pytest.raises(ConfigError, match=r"resume=true: the completed run in .* was made with other settings: "
                                          r"train.lr=0.01 \(the completed run: None\).*overwrite=true"):
        run([*args, "resume=true", "train.lr=1e-2"], tmp_path)
    assert (folder / "results.json").read_text() == record
    with pytest.raises(ConfigError, match="resume=true and overwrite=true contradict"):
        run([*args, "resume=true", "overwrite=true"], tmp_path)

    again = run([*args, "overwrite=true"], tmp_path)
    assert again["metrics"] == first["metrics"]
    assert (folder / "metrics.jsonl").read_text().count("\n") == log.count("\n")  # the new run's lines only
    assert not (folder / ".running").exists()


def _snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_replacement_that_fails_before_training_leaves_the_earlier_run_as_it_was(kinds, tmp_path):
    """overwrite=true (`make run` passes it) changes nothing in the folder until the new run is built: a bad
    method value or a data problem found on the way is an error, and the earlier run stays whole."""
    from loretta.experiment import ConfigError

    args = [*ARGS, f"task.data_dir={kinds['classification'][1]}"]
    run(args, tmp_path)
    folder = _folder(tmp_path)
    before = _snapshot(folder)
    (tmp_path / "empty").mkdir()
    for bad, error in [("method.tensor_rank=0", r"method 'loretta_adp'.*tensor_rank"),
                       (f"task.data_dir={tmp_path / 'empty'}", r"task 'sst2', split 'validation': expected dev.tsv"),
                       ("task.split_validation=5000", r"split_validation must be an integer in 1..199 .*got 5000")]:
        with pytest.raises(ConfigError, match=error):
            run([*args, "overwrite=true", bad], tmp_path)
        assert _snapshot(folder) == before, bad


def test_results_are_readable_as_the_other_files(kinds, tmp_path):
    previous = os.umask(0o022)
    try:
        run([*ARGS, f"task.data_dir={kinds['classification'][1]}"], tmp_path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((_folder(tmp_path) / "results.json").stat().st_mode) == 0o644


def test_a_killed_runs_folder_is_resumed_or_replaced_not_run_over(kinds, tmp_path):
    from loretta.experiment import ConfigError

    args = [*ARGS, f"task.data_dir={kinds['classification'][1]}"]
    folder = _folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / ".running").write_text('{"pid": 1, "host": "node7", "started": "2026-11-30 10:00:00"}')
    (folder / "metrics.jsonl").write_text('{"step": 1, "train/loss": 0.7}\n')
    with pytest.raises(ConfigError, match=r"a run that is going or was killed \(.running: pid 1 on node7"):
        run(args, tmp_path)
    record = run([*args, "resume=true"], tmp_path)  # no checkpoint: from scratch, the old log dropped
    assert record["status"] == "completed" and record["resumed_at_steps"] == []
    assert '"train/loss": 0.7}' not in (folder / "metrics.jsonl").read_text()


def test_resume_keeps_the_settings_and_the_log_of_the_interrupted_run(kinds, tmp_path, monkeypatch):
    from loretta.experiment import ConfigError

    args = [*ARGS, "train.max_steps=6", "train.log_every=1", f"task.data_dir={kinds['classification'][1]}"]
    uninterrupted = run(args, tmp_path / "a")
    die_after_checkpoint(monkeypatch, step=4)
    with pytest.raises(KeyboardInterrupt):
        run(args, tmp_path / "b")
    monkeypatch.undo()
    folder = _folder(tmp_path / "b")
    with open(folder / "metrics.jsonl", "a") as f:  # what a killed run logged after its checkpoint
        f.write('{"step": 5, "train/loss": 0.5}\n{"step": 6, "train/lo')

    with pytest.raises(ConfigError, match=r"made with other settings: train.lr=0.5 \(the checkpoint's run: None\)"):
        run([*args, "resume=true", "train.lr=0.5"], tmp_path / "b")
    with pytest.raises(ConfigError, match=r"method.tensor_rank=3 \(the checkpoint's run: 5\)"):
        run([*args, "resume=true", "method.tensor_rank=3"], tmp_path / "b")
    resumed = run([*args, "resume=true", "train.progress_bar=false", "logger.wandb=off"], tmp_path / "b")
    assert resumed["resumed_at_steps"] == [4] and resumed["metrics"] == uninterrupted["metrics"]
    assert _steps(folder) == _steps(_folder(tmp_path / "a"))


def test_sigterm_ends_a_run_as_an_error_does_and_it_resumes(kinds, tmp_path):
    data_dir = kinds["classification"][1]
    args = [*TINY, *ARGS, "train.max_steps=200", "train.eval_every=2", "train.num_train=64",
            f"task.data_dir={data_dir}", f"output_root={tmp_path}"]
    folder = _folder(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "loretta.run", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (folder / "checkpoint" / "last.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    left = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    assert "results.json" not in left and ".running" not in left and not any(n.endswith(".tmp") for n in left)
    assert "checkpoint/last.pt" in left
    resumed = subprocess.run([sys.executable, "-m", "loretta.run", *args, "resume=true"],
                             cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = json.loads((folder / "results.json").read_text())
    assert record["status"] == "completed" and record["resumed_at_steps"] and record["steps"] == 200


def test_a_run_that_fails_before_training_leaves_no_run_behind(kinds, tmp_path, monkeypatch):
    """An error while loading (a model package missing, a task without examples) is not an unfinished run:
    the next run goes ahead without resume / overwrite."""
    from loretta.experiment import ConfigError, loop, run_folder

    def no_model(*args, **kwargs):
        raise ConfigError("model package not installed")

    args = [*ARGS, f"task.data_dir={kinds['classification'][1]}"]
    monkeypatch.setattr(loop.models, "load", no_model)
    with pytest.raises(ConfigError, match="not installed"):
        run(args, tmp_path)
    assert run_folder.earlier_run(_folder(tmp_path)) is None
    monkeypatch.undo()
    assert run(args, tmp_path)["status"] == "completed"
