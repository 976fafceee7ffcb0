"""scripts/make_tables.py on a results folder with missing runs, several seeds, and the paper beside."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from .helpers import ENV, REPO

OUTPUTS = ["score_vs_params.png", "summary.csv", "tables.md", "tables.tex"]


def fake_run(root, model, method, task, seed, score, params, variant="", metric="accuracy", status="completed",
             drop=()):
    folder = root / task / model / f"{method}{variant}" / f"seed{seed}"
    folder.mkdir(parents=True)
    record = {"task": task, "model": model, "method": method, "seed": seed, "status": status, "variant": variant,
              "metrics": {metric: score, "loss": 0.3}, "primary_metric": metric, "trainable_params": params}
    for key in drop:
        del record[key]
    (folder / "results.json").write_text(json.dumps(record))


def make_tables(*args, umask=None):
    return subprocess.run([sys.executable, "scripts/make_tables.py", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120, umask=-1 if umask is None else umask)


@pytest.fixture
def make_tables_module():
    """scripts/make_tables.py imported in this process (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("make_tables", REPO / "scripts" / "make_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_tables(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "deberta-base", "lora", "sst2", 0, 0.95, 296_450)
    fake_run(runs, "deberta-base", "lora", "sst2", 1, 0.94, 296_450)
    fake_run(runs, "deberta-base", "loretta_adp", "mrpc", 0, 0.9123, 99_194, metric="f1")
    fake_run(runs, "deberta-base", "loretta_adp", "sst2", 0, 0.9, 67_000, variant="_r2")
    fake_run(runs, "llama2-7b", "loretta_adp", "copa", 0, 0.87, 876_800)
    fake_run(runs, "minilm", "lora", "movie_snippets", 0, 0.79, 74_498)
    fake_run(runs, "minilm", "loretta_adp", "movie_snippets", 0, 0.5, 10, status="failed")  # ignored
    (runs / "broken").mkdir()
    (runs / "broken" / "results.json").write_text("{not json")  # skipped with a message
    out = tmp_path / "tables"
    proc = subprocess.run([sys.executable, "scripts/make_tables.py", "--results", str(runs), "--out", str(out)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (out / "tables.md").read_text()
    assert "6 completed runs" in md
    table1 = md.split("### Table 1: GLUE on DeBERTa-base")[1].split("###")[0]
    lora = [line for line in table1.splitlines() if line.startswith("| LoRA r=8 |")]
    assert lora[0].startswith("| LoRA r=8 | paper | 0.30M | 87.30 | 94.95 |")  # the paper's row
    assert lora[1].startswith("| LoRA r=8 | ours | 0.30M | — | 94.50 ± 0.71 | — |")  # mean ± std over 2 seeds
    adp = [line for line in table1.splitlines() if line.startswith("| LoRETTA_adp | ours")][0]
    assert "| 0.10M | — | — | 91.23 |" in adp and adp.endswith("| — |")  # no average while runs are missing
    assert "| P-Tuning | paper |" in table1 and "| P-Tuning | ours |" in table1
    table2 = md.split("### Table 2")[1].split("###")[0]
    assert [line for line in table2.splitlines() if line.startswith("| LoRETTA_adp | ours")][0].startswith(
        "| LoRETTA_adp | ours | 0.88M | — | — | — | 87.00 | — |")
    table6 = md.split("### Table 6")[1].split("###")[0]
    assert "| LoRETTA_adp | 2 | ours | 0.067M | 90.00 | — |" in table6
    assert "| LoRETTA_adp | 2 | paper | 0.067M | 95.41 | 92.04 |" in table6
    other = md.split("### Other runs")[1].split("###")[0]
    assert "| minilm | LoRA r=8 | 0.07M | 79.00 | 79.00 |" in other and "loretta_adp" not in other.lower()
    tex = (out / "tables.tex").read_text()
    assert "\\begin{tabular}" in tex and "94.50 $\\pm$ 0.71" in tex and "LoRETTA\\_adp" in tex
    assert (out / "score_vs_params.png").stat().st_size > 1000
    assert "deberta-base,lora,,sst2,accuracy,94.5000" in (out / "summary.csv").read_text()
    assert "skipping" in proc.stderr and "broken" in proc.stderr


def test_no_completed_run_is_an_error_and_writes_nothing(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "minilm", "lora", "sst2", 0, 0.5, 10, status="failed")  # a folder with no completed run
    out = tmp_path / "tables"
    proc = make_tables("--results", runs, "--out", out)
    assert proc.returncode == 2, proc.stdout
    assert "no completed run" in proc.stderr and str(runs) in proc.stderr
    assert not out.exists()


def test_out_defaults_to_the_repositorys_tables_and_the_docs_agree(make_tables_module):
    args = make_tables_module.build_parser().parse_args(["--results", "runs"])
    assert args.out == REPO / "results" / "tables"
    for doc in ("README.md", "configs/README.md"):
        outs = re.findall(r"make_tables\.py --results \S+ --out (\S+)", (REPO / doc).read_text())
        assert outs and all(out.rstrip("/") == "results/tables" for out in outs), (doc, outs)


def test_completed_run_without_a_key_is_skipped_naming_file_and_key(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "minilm", "lora", "sst2", 0, 0.9, 74_498)
    fake_run(runs, "minilm", "lora", "sst2", 1, 0.8, 74_498, drop=["trainable_params"])
    out = tmp_path / "tables"
    proc = make_tables("--results", runs, "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert f"skipping {runs / 'sst2/minilm/lora/seed1/results.json'}" in proc.stderr
    assert "'trainable_params'" in proc.stderr
    assert "1 completed runs" in (out / "tables.md").read_text()


@pytest.mark.parametrize("csv_text", [None, "table,model,method,setting,task,score\n"], ids=["missing", "no-params_m"])
def test_bad_paper_file_is_a_usage_error(tmp_path, csv_text):
    runs = tmp_path / "runs"
    fake_run(runs, "minilm", "lora", "sst2", 0, 0.9, 74_498)
    paper = tmp_path / "paper.csv"
    if csv_text is not None:
        paper.write_text(csv_text)
    out = tmp_path / "tables"
    proc = make_tables("--results", runs, "--out", out, "--paper", paper)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: --paper" in proc.stderr and str(paper) in proc.stderr
    assert csv_text is None or "params_m" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("breaks", ["plot", "os.replace"])
def test_an_interrupted_run_leaves_the_old_files_whole(tmp_path, monkeypatch, make_tables_module, breaks):
    runs = tmp_path / "runs"
    fake_run(runs, "minilm", "lora", "sst2", 0, 0.9, 74_498)
    out = tmp_path / "tables"
    out.mkdir()
    for filename in OUTPUTS:
        (out / filename).write_text("old")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(*((make_tables_module, "plot") if breaks == "plot" else (os, "replace")), interrupt)
    with pytest.raises(KeyboardInterrupt):
        make_tables_module.main(["--results", str(runs), "--out", str(out), "--quiet"])
    assert sorted(os.listdir(out)) == OUTPUTS  # no temporary file left behind
    assert all((out / filename).read_text() == "old" for filename in OUTPUTS)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)], ids=["umask022", "umask027"])
def test_outputs_get_the_usual_permissions(tmp_path, umask, mode):
    runs = tmp_path / "runs"
    fake_run(runs, "minilm", "lora", "sst2", 0, 0.9, 74_498)
    out = tmp_path / "tables"
    proc = make_tables("--results", runs, "--out", out, "--quiet", umask=umask)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == OUTPUTS
    assert {f: oct((out / f).stat().st_mode & 0o777) for f in OUTPUTS} == {f: oct(mode) for f in OUTPUTS}
