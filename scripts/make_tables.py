#!/usr/bin/env python
"""Regenerate the paper's tables from a folder of runs, our numbers beside the paper's.

    python scripts/make_tables.py --results results/runs --out results/tables

Reads every `results.json` under --results (status "completed"), averages each (model, method,
variant, task) over seeds (mean ± std, scores in %), and writes to --out (default: the repository's
results/tables, where its committed tables live):
  tables.md / tables.tex  Table 1 (GLUE), Tables 2-3 (LLaMA-2), the ablations (Table 6 rank, Table 7
                          TT shape, Table 11 head / layer norms), and a table of every run that has no
                          cell in them; "—" where a run is missing; trainable parameters in millions
  summary.csv             one row per (model, method, variant, task)
  score_vs_params.png     average score against trainable parameters, per method (ours filled,
                          the paper's hollow)
The paper's numbers come from results/paper/paper_results.csv (--paper).
A setting run at several learning rates (variants that differ only in an `_lr<value>` part, e.g.
`_lr1e-4` and `_lr5e-4`) fills its paper-table cell with the lr whose runs have the best mean dev score
(under the MeZO protocol, which picks checkpoints by dev loss: the lowest mean dev loss), named under
the table; the test score never chooses. Seeds of one cell that train different numbers of parameters
are averaged but named on stderr (they are not the same setting), and so is a seed recorded twice (two
copies of one run under --results). A run of a paper model on a sample of the data (train.num_train /
num_dev / num_test) or for a set number of steps (train.max_steps) fills no paper-table cell: it is
listed under "Other runs" with those settings.

A results.json that cannot be read, or a completed one that lacks a field the tables read, holds one of the
wrong type (RECORD_FIELDS) or has a NaN or infinite metric (the run diverged), is skipped with a message
naming the file and the field. No completed run under --results is an error, and nothing is written. Each
file is replaced atomically: an interrupted run leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DASH = "—"
GLUE = ["mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb"]
TASK_NAMES = {"mnli": "MNLI", "sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "qnli": "QNLI", "qqp": "QQP",
              "rte": "RTE", "stsb": "STS-B", "cb": "CB", "boolq": "BoolQ", "wsc": "WSC", "copa": "COPA",
              "record": "ReCoRD", "squad": "SQuAD", "drop": "DROP", "wic": "WiC", "multirc": "MultiRC",
              "movie_snippets": "Movies", "mnli_mm": "MNLI-mm"}
METHOD_NAMES = {"ft": "FT", "adapters": "Adapters", "adapters_r8": "Adapters r=8", "lora": "LoRA r=8",
                "lora_r4": "LoRA r=4", "ptuning": "P-Tuning", "prompt": "Prompt", "prefix": "Prefix",
                "bitfit": "BitFit", "ia3": "IA3", "loretta_adp": "LoRETTA_adp", "loretta_rep": "LoRETTA_rep"}
MODEL_NAMES = {"deberta-base": "DeBERTa-base", "roberta-base": "RoBERTa-base", "llama2-7b": "LLaMA-2-7B",
               "llama2-13b": "LLaMA-2-13B", "llama2-70b": "LLaMA-2-70B"}
TABLE1_METHODS = ["ft", "adapters_r8", "lora", "ptuning", "lora_r4", "prompt", "prefix", "bitfit", "loretta_adp",
                  "loretta_rep"]
LLAMA_METHODS = ["ft", "adapters", "lora", "prefix", "ia3", "loretta_rep", "loretta_adp"]
SHAPES = {"_s8_8_12_8_8": "[8, 8, 12, 8, 8]", "_s64_12_64": "[64, 12, 64]", "_s4_4_4_12_4_4_4": "[4,4,4,12,4,4,4]"}
HEADS = {"True": "Tensorized", "False": "Regular", "none": "No"}
# The fields of a completed record the tables read and the types they may have (None: the field may be absent or
# null; a float must be finite), config.train's in TRAIN_FIELDS: read_run checks them before it reads one.
RECORD_FIELDS = {"model": (str,), "method": (str,), "task": (str,), "primary_metric": (str,), "metrics": (dict,),
                 "trainable_params": (int,), "variant": (str, None), "seed": (int, None), "lr": (int, float, None),
                 "best_dev": (dict, None), "selected_by": (str, None), "eval_split": (str, None),
                 "config": (dict, None)}
TRAIN_FIELDS = {"num_train": (int, None), "num_dev": (int, None), "num_test": (int, None), "max_steps": (int, None)}
RUN_KEYS = tuple(key for key, types in RECORD_FIELDS.items() if None not in types)  # the fields a run must have
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object", None: "null"}
LR_PART = re.compile(r"_lr[^_\s]+")  # a variant's learning-rate part ("_r10_lr3e-4" -> "_r10")
SAMPLED = ("num_train", "num_dev", "num_test")  # train settings that run a paper protocol on part of its data
PAPER_COLUMNS = ("table", "model", "method", "setting", "task", "score", "params_m")


# -- reading ----------------------------------------------------------------------------------------


def load_runs(folder: Path) -> list[dict]:
    """Every completed run under `folder`. A file that is broken is skipped with a message naming it, so that
    one bad run neither hides the others nor vanishes from the tables unnoticed."""
    runs = []
    for path in sorted(folder.rglob("results.json")):
        try:
            run = read_run(path)
        except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        if run is not None:
            runs.append(run)
    return runs


def read_run(path: Path) -> dict | None:
    """The run recorded in `path`, or None if it did not complete; a ValueError that says what is wrong."""
    record = json.loads(path.read_text())
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, found a {type(record).__name__}")
    if record.get("status") != "completed":
        return None
    missing = [key for key in RUN_KEYS if key not in record]
    if missing:
        raise ValueError(f"a completed run without the key(s) {', '.join(map(repr, missing))}")
    check_fields(record)
    metric, metrics = record["primary_metric"], record["metrics"]
    if metric not in metrics:
        raise ValueError(f"primary_metric {metric!r} is not among its metrics {metrics!r}")
    score = 100.0 * finite(metrics[metric], f"metrics[{metric!r}]")
    for key, value in metrics.items():  # a NaN loss beside a finite score: the score of a diverged model
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metrics[{key!r}] is {json.dumps(value)}: the run diverged")
    variant = (record.get("variant") or "") + (short_of_protocol(record) if record["model"] in MODEL_NAMES else "")
    return {"model": record["model"], "method": record["method"], "task": record["task"],
            "variant": variant, "seed": record.get("seed"), "score": score, "metric": metric,
            "params": float(record["trainable_params"]), "lr": record.get("lr"),
            "dev": dev_score(record, metric, score), "path": str(path)}


def check_fields(record: dict) -> None:
    """A ValueError naming the first field the tables read (RECORD_FIELDS, TRAIN_FIELDS) that has the wrong type,
    and the type it should have: such a run would stop the script (a null model, a list as a seed) or print as
    "nan" in the tables."""
    check_types(record, RECORD_FIELDS, "")
    config = record.get("config") or {}
    check_types(config, {"train": (dict, None)}, "config.")
    check_types(config.get("train") or {}, TRAIN_FIELDS, "config.train.")


def check_types(record: dict, fields: dict, prefix: str) -> None:
    for key, types in fields.items():
        value = record.get(key)
        if value is None and None in types:
            continue
        if isinstance(value, float) and float in types and not math.isfinite(value):
            raise ValueError(f"{prefix}{key} is {json.dumps(value)}, expected a finite number")
        if isinstance(value, bool) or not isinstance(value, tuple(t for t in types if t is not None)):
            expected = " or ".join(TYPE_NAMES[t] for t in types if not (t is int and float in types))
            raise ValueError(f"{prefix}{key} is {json.dumps(value)}, expected {expected}")


def short_of_protocol(record: dict) -> str:
    """What keeps a run of a paper model out of the paper tables' cells, as its variant's suffix
    (" [num_train=2000 max_steps=200]"): a sample of the data or a step limit (0: the untrained model) in
    place of the protocol's full data and epochs. Such runs are listed under "Other runs"."""
    train = (record.get("config") or {}).get("train") or {}  # of the types check_fields asks for
    parts = [f"{key}={train[key]}" for key in SAMPLED if train.get(key) is not None]
    if train.get("max_steps") is not None and train["max_steps"] >= 0:
        parts.append(f"max_steps={train['max_steps']}")
    return f" [{' '.join(parts)}]" if parts else ""


def dev_score(record: dict, metric: str, score: float) -> float | None:
    """How the run did on dev by the rule that picked its checkpoint, higher is better: the dev score (%), or
    minus the dev loss (selected_by loss: the MeZO protocol); None when the record does not say."""
    best = record.get("best_dev") or {}
    if record.get("selected_by") == "loss":
        return -finite(best["loss"], "best_dev['loss']") if "loss" in best else None
    if metric in best:
        return 100.0 * finite(best[metric], f"best_dev[{metric!r}]")
    return score if record.get("eval_split", "dev") == "dev" else None


def number(value, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is {value!r}, not a number") from None


def finite(value, what: str) -> float:
    """A record's score or loss: a JSON number, and finite (NaN or infinite: the run diverged)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is {json.dumps(value)}, not a number")
    if not math.isfinite(value):
        raise ValueError(f"{what} is {json.dumps(value)}: the run diverged")
    return float(value)


def aggregate(runs: list[dict]) -> dict:
    """(model, method, variant, task) -> {"mean", "std", "n", "params", "metric", "lr", "dev"}."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r["model"], r["method"], r["variant"], r["task"])].append(r)
    out = {}
    for key, rs in groups.items():
        scores = [r["score"] for r in rs]
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else 0.0
        sizes = sorted({int(r["params"]) for r in rs})
        if len(sizes) > 1:
            print(f"warning: {' '.join(key[:2])}{key[2]} {key[3]}: its runs train different numbers of parameters "
                  f"({', '.join(f'{s:,}' for s in sizes)}), so they are not one setting; averaged anyway "
                  f"({', '.join(r['path'] for r in rs)})", file=sys.stderr)
        seeds = [r["seed"] for r in rs]
        if len(set(seeds)) < len(seeds):
            twice = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
            paths = ", ".join(r["path"] for r in rs if r["seed"] in twice)
            print(f"warning: {' '.join(key[:2])}{key[2]} {key[3]}: seed(s) {', '.join(map(str, twice))} recorded by "
                  f"more than one run, each counted as a seed ({paths})", file=sys.stderr)
        lrs = {r["lr"] for r in rs}
        devs = [r["dev"] for r in rs]
        out[key] = {"mean": mean, "std": std, "n": len(scores), "params": sum(r["params"] for r in rs) / len(rs),
                    "metric": rs[0]["metric"], "lr": lrs.pop() if len(lrs) == 1 else None,
                    "dev": sum(devs) / len(devs) if None not in devs else None}
    return out


def setting(variant: str) -> str:
    """A variant without its learning-rate part: the setting a paper-table cell stands for."""
    return LR_PART.sub("", variant)


class Cells(dict):
    """(model, method, setting, task) -> the cell the paper tables show (see select_lr), remembering which
    keys the tables looked up: the runs of every other key go to "Other runs"."""

    def __init__(self, cells: dict):
        super().__init__(cells)
        self.looked_up: dict = {}  # in look-up order (a dict as an ordered set)

    def get(self, key, default=None):
        self.looked_up.setdefault(key)
        return super().get(key, default)


def select_lr(agg: dict) -> Cells:
    """One cell per (model, method, setting, task): where the setting ran at several learning rates, the lr whose
    runs have the best mean dev score (`dev`); a cell says which lr it took ("lr") and which it had ("lrs")."""
    candidates = defaultdict(list)
    for (model, method, variant, task), cell in agg.items():
        candidates[(model, method, setting(variant), task)].append((variant, cell))
    cells = {}
    for key, found in candidates.items():
        # the best dev score; a run without one only when no candidate has one; then the plain variant
        variant, cell = max(found, key=lambda vc: (vc[1]["dev"] is not None, vc[1]["dev"] or 0.0, vc[0] == "",
                                                   vc[0]))
        cells[key] = {**cell, "variant": variant,
                      "lrs": sorted({c["lr"] for _, c in found if c["lr"] is not None})}
    return Cells(cells)


def load_paper(path: Path) -> dict:
    """(table, model, method, setting, task) -> score; (table, model, method, setting, "params") -> M.

    A ValueError naming the file (and line) when a column or a number is missing."""
    import csv

    paper = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [column for column in PAPER_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} has no column(s) {', '.join(missing)} (expected {', '.join(PAPER_COLUMNS)})")
        for row in reader:
            where = f"{path} line {reader.line_num}"
            key = (row["table"], row["model"], row["method"], row["setting"])
            paper[(*key, row["task"])] = number(row["score"], f"{where}: score")
            paper[(*key, "params")] = number(row["params_m"], f"{where}: params_m")
    return paper


# -- cells ------------------------------------------------------------------------------------------


def fmt_score(cell: dict | None) -> str:
    if cell is None:
        return DASH
    return f"{cell['mean']:.2f} ± {cell['std']:.2f}" if cell["n"] > 1 else f"{cell['mean']:.2f}"


def fmt_params(millions: float | None, digits: int = 2) -> str:
    return DASH if millions is None else f"{millions:.{digits}f}M"


def ours_row(cells, model, method, variant, tasks, digits=3, average=True):
    """Our row of a paper table. Parameters with 3 decimals: the paper cuts some counts and rounds others
    (55,766 -> 0.05M, 99,194 -> 0.10M), so ours at its 2 would look different where they are the same."""
    cells = [cells.get((model, method, variant, t)) for t in tasks]
    params = next((c["params"] / 1e6 for c in cells if c is not None), None)
    row = [fmt_params(params, digits)] + [fmt_score(c) for c in cells]
    if average:
        row.append(f"{sum(c['mean'] for c in cells) / len(cells):.2f}" if all(cells) else DASH)
    return row, any(cells)


def paper_row(paper, table, model, method, setting, tasks, digits=2, average=True):
    scores = [paper.get((table, model, method, setting, t)) for t in tasks]
    row = [fmt_params(paper.get((table, model, method, setting, "params")), digits)]
    row += [DASH if s is None else f"{s:.2f}" for s in scores]
    if average:
        row.append(f"{sum(scores) / len(scores):.2f}" if all(s is not None for s in scores) else DASH)
    return row, any(s is not None for s in scores)


# -- tables -----------------------------------------------------------------------------------------


class Table:
    def __init__(self, title: str, header: list[str], note: str = ""):
        self.title, self.header, self.note, self.rows = title, header, note, []
        self.footer = ""  # below the table (in LaTeX: the end of the caption)

    def add(self, row: list[str]) -> None:
        self.rows.append(row)

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.footer:
            lines += ["", self.footer]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        def esc(s: str) -> str:
            return (s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")
                    .replace("±", "$\\pm$").replace(DASH, "--"))

        caption = esc(self.title) + (f". {esc(self.footer)}" if self.footer else "")
        lines = ["\\begin{table}[t]", "\\centering", "\\small",
                 "\\begin{tabular}{" + "l" * 2 + "r" * (len(self.header) - 2) + "}", "\\toprule",
                 " & ".join(esc(h) for h in self.header) + " \\\\", "\\midrule"]
        lines += [" & ".join(esc(c) for c in r) + " \\\\" for r in self.rows]
        lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{caption}}}", "\\end{table}"]
        return "\n".join(lines) + "\n"


def name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def fmt_lr(lr: float) -> str:
    """3e-4, 2.5e-4, 1e-6: as learning rates are written."""
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def lr_footer(cells: Cells, keys: list) -> str:
    """The learning rates chosen for the cells `keys` where a setting ran at several."""
    chosen = defaultdict(list)
    for key in keys:
        cell = dict.get(cells, key)
        if cell is not None and len(cell["lrs"]) > 1:
            chosen[key[:3]].append(f"{TASK_NAMES.get(key[3], key[3])} {fmt_lr(cell['lr'])} "
                                   f"(of {', '.join(fmt_lr(lr) for lr in cell['lrs'])})")
    if not chosen:
        return ""
    several_models = len({model for model, _, _ in chosen}) > 1
    parts = [f"{MODEL_NAMES.get(model, model) + ' ' if several_models else ''}{name(method)}{variant}: "
             + ", ".join(choices) for (model, method, variant), choices in chosen.items()]
    return "Learning rate with the best mean dev score, where several ran: " + "; ".join(parts) + "."


def table1(cells, paper, model) -> Table:
    t = Table(f"Table 1: GLUE on {MODEL_NAMES[model]} (dev set, best evaluation)",
              ["Method", "", "# Train. Param."] + [TASK_NAMES[x] for x in GLUE] + ["Avg."],
              "Scores in %: MNLI-m acc, SST-2 acc, MRPC F1, CoLA MCC, QNLI acc, QQP F1, RTE acc, STS-B Spearman. "
              "The paper rows' Avg. is the mean of their cells (the paper's printed averages differ by up to 0.03).")
    methods = TABLE1_METHODS + sorted({k[1] for k in cells if k[0] == model and k[2] == ""} - set(TABLE1_METHODS))
    for method in methods:
        p, has_paper = paper_row(paper, "table1", model, method, "", GLUE)
        o, has_ours = ours_row(cells, model, method, "", GLUE)
        if has_paper:
            t.add([name(method), "paper", *p])
        if has_paper or has_ours:
            t.add([name(method), "ours", *o])
    return t


def table2(cells, paper) -> Table:
    tasks = ["cb", "boolq", "wsc", "copa", "record", "squad", "drop"]
    t = Table("Table 2: LLaMA-2-7B (MeZO protocol: 1000 train / 500 dev / up to 1000 test)",
              ["Method", "", "Train. Param."] + [TASK_NAMES[x] for x in tasks],
              "CB, BoolQ, WSC, COPA, ReCoRD: accuracy; SQuAD, DROP: token F1 (the paper's printed CB/WSC/ReCoRD "
              "values are accuracies).")
    for method in LLAMA_METHODS:
        t.add([name(method), "paper", *paper_row(paper, "table2", "llama2-7b", method, "", tasks, average=False)[0]])
        t.add([name(method), "ours", *ours_row(cells, "llama2-7b", method, "", tasks, average=False)[0]])
    return t


def table3(cells, paper) -> Table:
    t13, t70 = ["copa", "record", "squad", "drop"], ["squad", "drop"]
    t = Table("Table 3: LLaMA-2-13B and LLaMA-2-70B",
              ["Method", "", "13B Param."] + [f"13B {TASK_NAMES[x]}" for x in t13] + ["70B Param."]
              + [f"70B {TASK_NAMES[x]}" for x in t70])
    for method in ["adapters", "lora", "ia3", "loretta_rep", "loretta_adp"]:
        t.add([name(method), "paper", *paper_row(paper, "table3", "llama2-13b", method, "", t13, average=False)[0],
               *paper_row(paper, "table3", "llama2-70b", method, "", t70, average=False)[0]])
        t.add([name(method), "ours", *ours_row(cells, "llama2-13b", method, "", t13, average=False)[0],
               *ours_row(cells, "llama2-70b", method, "", t70, average=False)[0]])
    return t


def _ablation_cell(cells, method, variant, tasks, fallback_default: bool):
    """Our row for an ablation variant; the plain run (variant "") stands in for the default setting."""
    row, found = ours_row(cells, "deberta-base", method, variant, tasks, average=False)
    if not found and fallback_default:
        row, found = ours_row(cells, "deberta-base", method, "", tasks, average=False)
    return row


def table6(cells, paper) -> Table:
    tasks = ["sst2", "qnli"]
    t = Table("Table 6: tensor rank (DeBERTa-base)", ["Method", "Rank", "", "Param."] + [TASK_NAMES[x] for x in tasks])
    for method in ("loretta_adp", "loretta_rep"):
        for r in (2, 5, 10, 20):
            v = f"_r{r}"
            t.add([name(method), str(r), "paper", *paper_row(paper, "table6", "deberta-base", method, v, tasks, 3, False)[0]])
            t.add([name(method), str(r), "ours", *_ablation_cell(cells, method, v, tasks, r == 5)])
    return t


def table7(cells, paper) -> Table:
    tasks = ["sst2", "mrpc", "qnli"]
    t = Table("Table 7: TT shape of the 768x64 adapter matrices (LoRETTA_adp, DeBERTa-base)",
              ["Shape", "", "", "Param."] + [TASK_NAMES[x] for x in tasks])
    for v, shape in SHAPES.items():
        t.add([shape, "", "paper", *paper_row(paper, "table7", "deberta-base", "loretta_adp", v, tasks, 2, False)[0]])
        t.add([shape, "", "ours", *_ablation_cell(cells, "loretta_adp", v, tasks, v == "_s8_8_12_8_8")])
    return t


def table11(cells, paper) -> Table:
    tasks = ["sst2", "mrpc", "qnli"]
    t = Table("Table 11: classifier & pooler, trainable layer norms (DeBERTa-base)",
              ["Method", "Head / LN", "", "Param."] + [TASK_NAMES[x] for x in tasks])
    for method in ("loretta_adp", "loretta_rep"):
        for head in ("True", "False", "none"):
            for ln in ("True", "False"):
                v = f"_head-{head}_ln-{ln}"
                label = f"{HEADS[head]} / {'yes' if ln == 'True' else 'no'}"
                t.add([name(method), label, "paper", *paper_row(paper, "table11", "deberta-base", method, v, tasks, 3, False)[0]])
                default = v == "_head-True_ln-True"
                t.add([name(method), label, "ours", *_ablation_cell(cells, method, v, tasks, default)])
    return t


def paper_tables(cells: Cells, paper) -> list[Table]:
    """The paper's layouts, each with the learning rates it chose noted below it."""
    builds = [lambda: table1(cells, paper, "deberta-base"), lambda: table1(cells, paper, "roberta-base"),
              lambda: table2(cells, paper), lambda: table3(cells, paper), lambda: table6(cells, paper),
              lambda: table7(cells, paper), lambda: table11(cells, paper)]
    tables = []
    for build in builds:
        before = len(cells.looked_up)
        table = build()
        table.footer = lr_footer(cells, list(cells.looked_up)[before:])
        tables.append(table)
    return tables


def other_runs(agg, cells: Cells) -> Table | None:
    """Every run the paper tables have no cell for (other models, tasks, settings): model x method rows.
    Call it after the paper tables, whose look-ups it reads."""
    rest = {k: c for k, c in agg.items() if (k[0], k[1], setting(k[2]), k[3]) not in cells.looked_up}
    if not rest:
        return None
    tasks = sorted({k[3] for k in rest}, key=lambda x: (x not in GLUE, x))
    t = Table("Other runs (models and settings outside the paper's tables)",
              ["Model", "Method", "# Train. Param."] + [TASK_NAMES.get(x, x) for x in tasks] + ["Avg."])
    for model, method, variant in sorted({k[:3] for k in rest}):
        row, _ = ours_row(rest, model, method, variant, tasks, digits=2)
        t.add([model, name(method) + variant, *row])
    return t


# -- plot -------------------------------------------------------------------------------------------


def plot(cells, paper) -> bytes:
    """score_vs_params.png, as bytes (rendered in memory, so it is written like every other file): the plain
    setting of each (model, method), at the learning rate the tables show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_model = defaultdict(dict)  # model -> method -> (params, mean score over tasks)
    for (model, method, variant, task), cell in dict.items(cells):
        if variant:
            continue
        per_model[model].setdefault(method, []).append((cell["params"], cell["mean"]))
    models = sorted(per_model) or ["(no runs)"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    markers = dict(zip(sorted(METHOD_NAMES), "os^vD<>pPX*h"))
    for ax, model in zip(axes[0], models):
        for method, points in sorted(per_model.get(model, {}).items()):
            params = sum(p for p, _ in points) / len(points)
            score = sum(s for _, s in points) / len(points)
            ax.scatter(params, score, marker=markers.get(method, "o"), s=60, label=f"{name(method)} (ours)")
            ax.annotate(name(method), (params, score), textcoords="offset points", xytext=(4, 4), fontsize=7)
        table = {"deberta-base": "table1", "roberta-base": "table1", "llama2-7b": "table2"}.get(model)
        title = MODEL_NAMES.get(model, model)
        if table:
            title += " (hollow: the paper)"
            for method in sorted({k[2] for k in paper if k[0] == table and k[1] == model and k[3] == ""}):
                scores = [v for k, v in paper.items() if k[:4] == (table, model, method, "") and k[4] != "params"]
                ax.scatter(paper[(table, model, method, "", "params")] * 1e6, sum(scores) / len(scores),
                           marker=markers.get(method, "o"), s=60, facecolors="none", edgecolors="gray")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("average score (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()


# -- writing ----------------------------------------------------------------------------------------


def summary_csv(agg) -> str:
    import csv

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # quotes a field that holds a comma
    writer.writerow(["model", "method", "variant", "task", "metric", "mean", "std", "n", "trainable_params", "lr"])
    for (model, method, variant, task), c in sorted(agg.items()):
        writer.writerow([model, method, variant, task, c["metric"], f"{c['mean']:.4f}", f"{c['std']:.4f}", c["n"],
                         int(c["params"]), "" if c["lr"] is None else fmt_lr(c["lr"])])
    return out.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one step: a reader, or a run interrupted here, finds the old file or the new
    one, never half of one (the temporary file sits in the same folder, so os.replace is a rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp's 0600 would hide the tables from others
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


# -- main -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="folder searched for results.json files")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "tables",
                        help="where the tables and the plot go (default: the repository's results/tables)")
    parser.add_argument("--paper", type=Path, default=REPO / "results" / "paper" / "paper_results.csv",
                        help="the paper's numbers (default: the repository's results/paper/paper_results.csv)")
    parser.add_argument("--quiet", action="store_true", help="do not print the tables")
    return parser


def check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.results.is_dir():
        parser.error(f"--results {args.results} is not a directory")
    if not args.paper.is_file():
        parser.error(f"--paper {args.paper} is not a file (expected a CSV with the columns "
                     f"{', '.join(PAPER_COLUMNS)}, like results/paper/paper_results.csv)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")


def render(runs, agg, paper, results: Path) -> dict[str, bytes]:
    """Every output file, name -> contents, all rendered before the first is written."""
    cells = select_lr(agg)
    tables = paper_tables(cells, paper)
    extra = other_runs(agg, cells)
    if extra is not None:
        tables.insert(0, extra)
    header = (f"# Results\n\nGenerated by `scripts/make_tables.py` from {len(runs)} completed runs in "
              f"`{results}`. Scores in %, mean ± std over seeds when there are several; \"{DASH}\" = no run. "
              f"Where a setting ran at several learning rates (variants `_lr<value>`), a paper table shows the lr "
              f"with the best mean dev score (MeZO protocol: lowest mean dev loss), named below it. "
              f"Paper rows: results/paper/paper_results.csv.\n\n")
    markdown = header + "\n".join(t.markdown() for t in tables)
    latex = ("% Generated by scripts/make_tables.py (needs \\usepackage{booktabs})\n"
             + "\n".join(t.latex() for t in tables))
    return {"tables.md": markdown.encode(), "tables.tex": latex.encode(), "summary.csv": summary_csv(agg).encode(),
            "score_vs_params.png": plot(cells, paper)}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_paths(parser, args)
    runs = load_runs(args.results)
    if not runs:
        parser.error(f"no completed run (a results.json with status \"completed\") under --results {args.results}; "
                     f"nothing written")
    try:
        paper = load_paper(args.paper)
    except (OSError, ValueError) as e:
        parser.error(f"--paper: {e}")
    outputs = render(runs, aggregate(runs), paper, args.results)

    args.out.mkdir(parents=True, exist_ok=True)
    for filename, data in outputs.items():
        write_atomic(args.out / filename, data)
    if not args.quiet:
        print(outputs["tables.md"].decode())
    print(f"wrote {args.out / 'tables.md'}, tables.tex, summary.csv, score_vs_params.png ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
