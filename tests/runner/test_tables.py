"""scripts/make_tables.py on a results folder with missing runs, several seeds, and the paper beside."""

from __future__ import annotations

import csv
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
             drop=(), **extra):
    """A results.json as the runner writes it (the keys make_tables reads; `extra` adds or replaces some)."""
    folder = root / task / model / f"{method}{variant}" / f"seed{seed}"
    folder.mkdir(parents=True)
    record = {"task": task, "model": model, "method": method, "seed": seed, "status": status, "variant": variant,
              "metrics": {metric: score, "loss": 0.3}, "primary_metric": metric, "trainable_params": params, **extra}
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
    assert lora[1].startswith("| LoRA r=8 | ours | 0.296M | — | 94.50 ± 0.71 | — |")  # mean ± std over 2 seeds
    adp = [line for line in table1.splitlines() if line.startswith("| LoRETTA_adp | ours")][0]
    assert "| 0.099M | — | — | 91.23 |" in adp and adp.endswith("| — |")  # no average while runs are missing
    assert "| P-Tuning | paper |" in table1 and "| P-Tuning | ours |" in table1
    table2 = md.split("### Table 2")[1].split("###")[0]
    assert [line for line in table2.splitlines() if line.startswith("| LoRETTA_adp | ours")][0].startswith(
        "| LoRETTA_adp | ours | 0.877M | — | — | — | 87.00 | — |")
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


def section(md: str, title: str) -> str:
    return md.split(f"### {title}")[1].split("###")[0]


def rows(table: str, start: str) -> list[str]:
    return [line for line in table.splitlines() if line.startswith(start)]


def cell(table: str, start: str, column: str) -> str:
    """The cell of the first row starting with `start` in the column headed `column`."""
    header = next(line for line in table.splitlines() if line.startswith("| "))
    return rows(table, start)[0].split(" | ")[header.split(" | ").index(column)]


def test_runs_outside_the_paper_layouts_are_listed(tmp_path):
    """A run of a paper model that no paper table has a cell for (another task, another setting) is in
    "Other runs", not silently left out of tables.md."""
    runs = tmp_path / "runs"
    fake_run(runs, "deberta-base", "lora", "sst2", 0, 0.95, 296_450)  # Table 1
    fake_run(runs, "deberta-base", "lora", "wic", 0, 0.61, 296_450)  # no WiC in Table 1
    fake_run(runs, "llama2-7b", "lora", "sst2", 0, 0.93, 4_194_304)  # no SST-2 in Table 2
    # Table 6 has no MRPC, and is DeBERTa's
    fake_run(runs, "deberta-base", "loretta_adp", "mrpc", 0, 0.88, 67_778, variant="_r2", metric="f1")
    fake_run(runs, "roberta-base", "loretta_adp", "sst2", 0, 0.93, 206_000, variant="_r10")
    out = tmp_path / "tables"
    proc = make_tables("--results", runs, "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    other = section((out / "tables.md").read_text(), "Other runs")
    assert cell(other, "| deberta-base | LoRA r=8 |", "WiC") == "61.00"
    assert cell(other, "| deberta-base | LoRA r=8 |", "SST-2") == "—"  # Table 1's
    assert cell(other, "| llama2-7b | LoRA r=8 |", "SST-2") == "93.00"
    assert cell(other, "| deberta-base | LoRETTA_adp_r2 |", "MRPC") == "88.00"
    assert cell(other, "| roberta-base | LoRETTA_adp_r10 |", "SST-2") == "93.00"


def test_table_cells_take_the_learning_rate_with_the_best_dev_score(tmp_path):
    """Runs of one setting at several learning rates (variants `_lr<value>`, as the lr grid of the paper's
    protocol gives): the paper tables show the lr with the best mean dev score over seeds (the MeZO protocol:
    the lowest mean dev loss, as it picks checkpoints), never the best test score."""
    runs = tmp_path / "runs"
    for seed, (low, high) in enumerate([(0.90, 0.95), (0.92, 0.93)]):
        fake_run(runs, "deberta-base", "lora", "sst2", seed, low, 296_450, variant="_lr1e-4", lr=1e-4,
                 best_dev={"accuracy": low, "loss": 0.3}, selected_by="metric", eval_split="dev")
        fake_run(runs, "deberta-base", "lora", "sst2", seed, high, 296_450, variant="_lr5e-4", lr=5e-4,
                 best_dev={"accuracy": high, "loss": 0.3}, selected_by="metric", eval_split="dev")
    fake_run(runs, "llama2-7b", "lora", "copa", 0, 0.80, 4_194_304, variant="_lr1e-4", lr=1e-4,
             best_dev={"loss": 1.0}, selected_by="loss", eval_split="test")
    fake_run(runs, "llama2-7b", "lora", "copa", 0, 0.95, 4_194_304, variant="_lr1e-3", lr=1e-3,
             best_dev={"loss": 2.0}, selected_by="loss", eval_split="test")
    fake_run(runs, "deberta-base", "loretta_adp", "sst2", 0, 0.91, 67_778, variant="_r2_lr3e-4", lr=3e-4,
             best_dev={"accuracy": 0.91}, selected_by="metric", eval_split="dev")
    out = tmp_path / "tables"
    proc = make_tables("--results", runs, "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    md = (out / "tables.md").read_text()
    table1 = section(md, "Table 1: GLUE on DeBERTa-base")
    assert cell(table1, "| LoRA r=8 | ours |", "SST-2") == "94.00 ± 1.41"
    assert "LoRA r=8: SST-2 5e-4 (of 1e-4, 5e-4)" in table1
    table2 = section(md, "Table 2")
    assert cell(table2, "| LoRA r=8 | ours |", "COPA") == "80.00"  # dev loss 1.0 beats 2.0
    assert "LoRA r=8: COPA 1e-4 (of 1e-4, 1e-3)" in table2
    table6 = section(md, "Table 6")
    assert cell(table6, "| LoRETTA_adp | 2 | ours |", "SST-2") == "91.00"
    assert "Other runs" not in md  # every run has its cell


def test_our_parameter_counts_are_not_rounded_into_disagreement(tmp_path):
    """The paper prints 0.05M for LoRETTA_rep's 55,766 and 0.51M for 516,096 (cut, not rounded) but 0.10M for
    99,194: two decimals would set our exact count (0.06M, 0.52M) against the paper's as if it differed."""
    runs = tmp_path / "runs"
    fake_run(runs, "deberta-base", "loretta_rep", "sst2", 0, 0.95, 55_766)
    fake_run(runs, "llama2-7b", "loretta_rep", "copa", 0, 0.86, 516_096)
    fake_run(runs, "llama2-13b", "loretta_rep", "copa", 0, 0.86, 701_440)
    out = tmp_path / "tables"
    proc = make_tables("--results", runs, "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    md = (out / "tables.md").read_text()
    assert rows(section(md, "Table 1: GLUE on DeBERTa-base"), "| LoRETTA_rep | ours | 0.056M |")
    assert rows(section(md, "Table 2"), "| LoRETTA_rep | ours | 0.516M |")
    assert rows(section(md, "Table 3"), "| LoRETTA_rep | ours | 0.701M |")


def test_runs_of_different_sizes_in_one_cell_are_flagged(tmp_path):
    """Seeds of one cell that train different numbers of parameters are not the same setting (e.g. LoRETTA_rep
    at rank 5 and at rank 8): averaged, but named on stderr."""
    runs = tmp_path / "runs"
    fake_run(runs, "llama2-7b", "loretta_rep", "copa", 0, 0.86, 368_640)
    fake_run(runs, "llama2-7b", "loretta_rep", "copa", 1, 0.84, 516_096)
    proc = make_tables("--results", runs, "--out", tmp_path / "tables", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "llama2-7b loretta_rep copa" in proc.stderr and "368,640" in proc.stderr and "516,096" in proc.stderr


def test_runs_on_part_of_the_data_fill_no_paper_cell(tmp_path):
    """A paper model run on a sample of the train set or for a few steps (a budget run, a zero-shot score) is not
    the paper's protocol: it goes to "Other runs" with those settings, not beside the paper's full-data number."""
    runs = tmp_path / "runs"
    fake_run(runs, "deberta-base", "lora", "sst2", 0, 0.88, 296_450, config={"train": {"num_train": 2000}})
    fake_run(runs, "deberta-base", "lora", "sst2", 1, 0.95, 296_450, config={"train": {"num_train": None}})
    fake_run(runs, "llama2-7b", "lora", "copa", 0, 0.70, 4_194_304, variant="_zero-shot",
             config={"train": {"max_steps": 0, "num_train": None, "num_test": 100}})
    out = tmp_path / "tables"
    proc = make_tables("--results", runs, "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    md = (out / "tables.md").read_text()
    assert cell(section(md, "Table 1: GLUE on DeBERTa-base"), "| LoRA r=8 | ours |", "SST-2") == "95.00"  # seed 1 only
    other = section(md, "Other runs")
    assert cell(other, "| deberta-base | LoRA r=8 [num_train=2000] |", "SST-2") == "88.00"
    assert cell(other, "| llama2-7b | LoRA r=8_zero-shot [num_test=100 max_steps=0] |", "COPA") == "70.00"
    summary = list(csv.reader((out / "summary.csv").open()))
    assert {len(row) for row in summary} == {10} and ["deberta-base", "lora", " [num_train=2000]", "sst2"] in [
        row[:4] for row in summary]


def test_a_seed_recorded_twice_is_flagged(tmp_path):
    """Two copies of one run under --results (two output roots, a backup) would count as two seeds."""
    fake_run(tmp_path / "runs" / "a", "deberta-base", "lora", "sst2", 0, 0.95, 296_450)
    fake_run(tmp_path / "runs" / "b", "deberta-base", "lora", "sst2", 0, 0.95, 296_450)
    proc = make_tables("--results", tmp_path / "runs", "--out", tmp_path / "tables", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "deberta-base lora sst2: seed(s) 0 recorded by more than one run" in proc.stderr
    assert str(tmp_path / "runs" / "a") in proc.stderr and str(tmp_path / "runs" / "b") in proc.stderr


def rewrite(path, **changes):
    """Replace some fields of the results.json at `path` (None: JSON null)."""
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


BAD_FIELDS = [  # (what a results.json's fields are changed to, the message that skips it)
    ({"model": None}, "model is null, expected a string"),
    ({"model": ["a"]}, 'model is ["a"], expected a string'),
    ({"variant": 5}, "variant is 5, expected a string or null"),
    ({"lr": [1]}, "lr is [1], expected a number or null"),
    ({"lr": float("nan")}, "lr is NaN, expected a finite number"),
    ({"seed": [0]}, "seed is [0], expected an integer or null"),
    ({"seed": True}, "seed is true, expected an integer or null"),
    ({"trainable_params": "74k"}, 'trainable_params is "74k", expected an integer'),
    ({"primary_metric": ["accuracy"]}, 'primary_metric is ["accuracy"], expected a string'),
    ({"config": "oops"}, 'config is "oops", expected an object or null'),
    ({"config": {"train": "oops"}}, 'config.train is "oops", expected an object or null'),
    ({"config": {"train": {"num_train": "all"}}}, 'config.train.num_train is "all", expected an integer or null'),
    ({"best_dev": "oops"}, 'best_dev is "oops", expected an object or null'),
    ({"best_dev": {"accuracy": float("nan")}}, "best_dev['accuracy'] is NaN: the run diverged"),
    ({"metrics": {"accuracy": float("nan"), "loss": 0.3}}, "metrics['accuracy'] is NaN: the run diverged"),
    ({"metrics": {"accuracy": float("inf"), "loss": 0.3}}, "metrics['accuracy'] is Infinity: the run diverged"),
    ({"metrics": {"accuracy": 0.5, "loss": float("nan")}}, "metrics['loss'] is NaN: the run diverged"),
    ({"metrics": {"accuracy": "0.9"}}, 'metrics[\'accuracy\'] is "0.9", not a number'),
]


@pytest.mark.parametrize("changes, message", BAD_FIELDS, ids=[json.dumps(changes) for changes, _ in BAD_FIELDS])
def test_a_wrongly_typed_or_diverged_run_is_skipped_naming_file_and_field(tmp_path, changes, message):
    """A field of the wrong type (a null model, a list as a seed, a string as the config of a paper model) or a
    NaN / infinite metric (a diverged run): that run is skipped with a message naming its file, the field and
    what was expected, and the tables are built from the others; no traceback, no "nan" in a table."""
    runs = tmp_path / "runs"
    fake_run(runs, "deberta-base", "lora", "sst2", 0, 0.95, 296_450, lr=1e-4)
    fake_run(runs, "deberta-base", "lora", "sst2", 1, 0.93, 296_450, lr=1e-4)
    bad = runs / "sst2/deberta-base/lora/seed1/results.json"
    rewrite(bad, **changes)
    out = tmp_path / "tables"
    proc = make_tables("--results", runs, "--out", out, "--quiet")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"skipping {bad}: {message}" in proc.stderr
    md = (out / "tables.md").read_text()
    assert "1 completed runs" in md
    assert cell(section(md, "Table 1: GLUE on DeBERTa-base"), "| LoRA r=8 | ours |", "SST-2") == "95.00"
    assert "nan" not in md.lower() and "nan" not in (out / "summary.csv").read_text().lower()
