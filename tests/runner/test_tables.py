"""scripts/make_tables.py on a results folder with missing runs, several seeds, and the paper beside."""

from __future__ import annotations

import json
import subprocess
import sys

from .helpers import ENV, REPO


def fake_run(root, model, method, task, seed, score, params, variant="", metric="accuracy", status="completed"):
    folder = root / task / model / f"{method}{variant}" / f"seed{seed}"
    folder.mkdir(parents=True)
    record = {"task": task, "model": model, "method": method, "seed": seed, "status": status, "variant": variant,
              "metrics": {metric: score, "loss": 0.3}, "primary_metric": metric, "trainable_params": params}
    (folder / "results.json").write_text(json.dumps(record))


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
