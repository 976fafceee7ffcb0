#!/usr/bin/env python
"""Regenerate the paper's tables from a folder of runs, our numbers beside the paper's.

    python scripts/make_tables.py --results results/runs --out results/tables

Reads every `results.json` under --results (status "completed"), averages each (model, method,
variant, task) over seeds (mean ± std, scores in %), and writes to --out (default: the repository's
results/tables, where its committed tables live):
  tables.md / tables.tex  Table 1 (GLUE), Tables 2-3 (LLaMA-2), the ablations (Table 6 rank, Table 7
                          TT shape, Table 11 head / layer norms), and a table of every other run;
                          "—" where a run is missing; trainable parameters in millions as the paper
                          prints them
  summary.csv             one row per (model, method, variant, task)
  score_vs_params.png     average score against trainable parameters, per method (ours filled,
                          the paper's hollow)
The paper's numbers come from results/paper/paper_results.csv (--paper).

A results.json that cannot be read, or a completed one that lacks a field, is skipped with a message
naming the file. No completed run under --results is an error, and nothing is written. Each file is
replaced atomically: an interrupted run leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
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
RUN_KEYS = ("model", "method", "task", "primary_metric", "metrics", "trainable_params")
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
    metric, metrics = record["primary_metric"], record["metrics"]
    if not isinstance(metrics, dict) or metric not in metrics:
        raise ValueError(f"primary_metric {metric!r} is not among its metrics {metrics!r}")
    return {"model": record["model"], "method": record["method"], "task": record["task"],
            "variant": record.get("variant") or "", "seed": record.get("seed"),
            "score": 100.0 * number(metrics[metric], f"metrics[{metric!r}]"), "metric": metric,
            "params": number(record["trainable_params"], "trainable_params"), "path": str(path)}


def number(value, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is {value!r}, not a number") from None


def aggregate(runs: list[dict]) -> dict:
    """(model, method, variant, task) -> {"mean", "std", "n", "params", "metric"}."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r["model"], r["method"], r["variant"], r["task"])].append(r)
    out = {}
    for key, rs in groups.items():
        scores = [r["score"] for r in rs]
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else 0.0
        out[key] = {"mean": mean, "std": std, "n": len(scores), "params": sum(r["params"] for r in rs) / len(rs),
                    "metric": rs[0]["metric"]}
    return out


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


def ours_row(agg, model, method, variant, tasks, digits=2, average=True):
    cells = [agg.get((model, method, variant, t)) for t in tasks]
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

    def add(self, row: list[str]) -> None:
        self.rows.append(row)

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        def esc(s: str) -> str:
            return (s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")
                    .replace("±", "$\\pm$").replace(DASH, "--"))

        lines = ["\\begin{table}[t]", "\\centering", "\\small",
                 "\\begin{tabular}{" + "l" * 2 + "r" * (len(self.header) - 2) + "}", "\\toprule",
                 " & ".join(esc(h) for h in self.header) + " \\\\", "\\midrule"]
        lines += [" & ".join(esc(c) for c in r) + " \\\\" for r in self.rows]
        lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{esc(self.title)}}}", "\\end{table}"]
        return "\n".join(lines) + "\n"


def name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def table1(agg, paper) -> list[Table]:
    tables = []
    for model in ("deberta-base", "roberta-base"):
        t = Table(f"Table 1: GLUE on {MODEL_NAMES[model]} (dev set, best evaluation)",
                  ["Method", "", "# Train. Param."] + [TASK_NAMES[x] for x in GLUE] + ["Avg."],
                  "Scores in %: MNLI-m acc, SST-2 acc, MRPC F1, CoLA MCC, QNLI acc, QQP F1, RTE acc, STS-B Spearman.")
        methods = TABLE1_METHODS + sorted({k[1] for k in agg if k[0] == model and k[2] == ""} - set(TABLE1_METHODS))
        for method in methods:
            p, has_paper = paper_row(paper, "table1", model, method, "", GLUE)
            o, has_ours = ours_row(agg, model, method, "", GLUE)
            if has_paper:
                t.add([name(method), "paper", *p])
            if has_paper or has_ours:
                t.add([name(method), "ours", *o])
        tables.append(t)
    return tables


def table2(agg, paper) -> Table:
    tasks = ["cb", "boolq", "wsc", "copa", "record", "squad", "drop"]
    t = Table("Table 2: LLaMA-2-7B (MeZO protocol: 1000 train / 500 dev / up to 1000 test)",
              ["Method", "", "Train. Param."] + [TASK_NAMES[x] for x in tasks],
              "CB, BoolQ, WSC, COPA, ReCoRD: accuracy; SQuAD, DROP: token F1 (the paper's printed CB/WSC/ReCoRD "
              "values are accuracies).")
    for method in LLAMA_METHODS:
        t.add([name(method), "paper", *paper_row(paper, "table2", "llama2-7b", method, "", tasks, average=False)[0]])
        t.add([name(method), "ours", *ours_row(agg, "llama2-7b", method, "", tasks, average=False)[0]])
    return t


def table3(agg, paper) -> Table:
    t13, t70 = ["copa", "record", "squad", "drop"], ["squad", "drop"]
    t = Table("Table 3: LLaMA-2-13B and LLaMA-2-70B",
              ["Method", "", "13B Param."] + [f"13B {TASK_NAMES[x]}" for x in t13] + ["70B Param."]
              + [f"70B {TASK_NAMES[x]}" for x in t70])
    for method in ["adapters", "lora", "ia3", "loretta_rep", "loretta_adp"]:
        t.add([name(method), "paper", *paper_row(paper, "table3", "llama2-13b", method, "", t13, average=False)[0],
               *paper_row(paper, "table3", "llama2-70b", method, "", t70, average=False)[0]])
        t.add([name(method), "ours", *ours_row(agg, "llama2-13b", method, "", t13, average=False)[0],
               *ours_row(agg, "llama2-70b", method, "", t70, average=False)[0]])
    return t


def _ablation_cell(agg, method, variant, tasks, fallback_default: bool):
    """Our row for an ablation variant; the plain run (variant "") stands in for the default setting."""
    row, found = ours_row(agg, "deberta-base", method, variant, tasks, digits=3, average=False)
    if not found and fallback_default:
        row, found = ours_row(agg, "deberta-base", method, "", tasks, digits=3, average=False)
    return row


def table6(agg, paper) -> Table:
    tasks = ["sst2", "qnli"]
    t = Table("Table 6: tensor rank (DeBERTa-base)", ["Method", "Rank", "", "Param."] + [TASK_NAMES[x] for x in tasks])
    for method in ("loretta_adp", "loretta_rep"):
        for r in (2, 5, 10, 20):
            v = f"_r{r}"
            t.add([name(method), str(r), "paper", *paper_row(paper, "table6", "deberta-base", method, v, tasks, 3, False)[0]])
            t.add([name(method), str(r), "ours", *_ablation_cell(agg, method, v, tasks, r == 5)])
    return t


def table7(agg, paper) -> Table:
    tasks = ["sst2", "mrpc", "qnli"]
    t = Table("Table 7: TT shape of the 768x64 adapter matrices (LoRETTA_adp, DeBERTa-base)",
              ["Shape", "", "", "Param."] + [TASK_NAMES[x] for x in tasks])
    for v, shape in SHAPES.items():
        t.add([shape, "", "paper", *paper_row(paper, "table7", "deberta-base", "loretta_adp", v, tasks, 2, False)[0]])
        t.add([shape, "", "ours", *_ablation_cell(agg, "loretta_adp", v, tasks, v == "_s8_8_12_8_8")])
    return t


def table11(agg, paper) -> Table:
    tasks = ["sst2", "mrpc", "qnli"]
    t = Table("Table 11: classifier & pooler, trainable layer norms (DeBERTa-base)",
              ["Method", "Head / LN", "", "Param."] + [TASK_NAMES[x] for x in tasks])
    for method in ("loretta_adp", "loretta_rep"):
        for head in ("True", "False", "none"):
            for ln in ("True", "False"):
                v = f"_head-{head}_ln-{ln}"
                label = f"{HEADS[head]} / {'yes' if ln == 'True' else 'no'}"
                t.add([name(method), label, "paper", *paper_row(paper, "table11", "deberta-base", method, v, tasks, 3, False)[0]])
                t.add([name(method), label, "ours", *_ablation_cell(agg, method, v, tasks, v == "_head-True_ln-True")])
    return t


def other_runs(agg) -> Table | None:
    """Everything the paper's tables do not show (other models, variants): model x method rows."""
    paper_models = {"deberta-base", "roberta-base", "llama2-7b", "llama2-13b", "llama2-70b"}
    keys = [k for k in agg if k[0] not in paper_models]
    if not keys:
        return None
    tasks = sorted({k[3] for k in keys}, key=lambda x: (x not in GLUE, x))
    t = Table("Other runs (models and settings outside the paper's tables)",
              ["Model", "Method", "# Train. Param."] + [TASK_NAMES.get(x, x) for x in tasks] + ["Avg."])
    for model, method, variant in sorted({k[:3] for k in keys}):
        row, _ = ours_row(agg, model, method, variant, tasks)
        t.add([model, name(method) + variant, *row])
    return t


# -- plot -------------------------------------------------------------------------------------------


def plot(agg, paper) -> bytes:
    """score_vs_params.png, as bytes (rendered in memory, so it is written like every other file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_model = defaultdict(dict)  # model -> method -> (params, mean score over tasks)
    for (model, method, variant, task), cell in agg.items():
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
    lines = ["model,method,variant,task,metric,mean,std,n,trainable_params"]
    for (model, method, variant, task), c in sorted(agg.items()):
        lines.append(f"{model},{method},{variant},{task},{c['metric']},{c['mean']:.4f},{c['std']:.4f},{c['n']},"
                     f"{int(c['params'])}")
    return "\n".join(lines) + "\n"


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
    tables = [*table1(agg, paper), table2(agg, paper), table3(agg, paper), table6(agg, paper), table7(agg, paper),
              table11(agg, paper)]
    extra = other_runs(agg)
    if extra is not None:
        tables.insert(0, extra)
    header = (f"# Results\n\nGenerated by `scripts/make_tables.py` from {len(runs)} completed runs in "
              f"`{results}`. Scores in %, mean ± std over seeds when there are several; \"{DASH}\" = no run. "
              f"Paper rows: results/paper/paper_results.csv.\n\n")
    markdown = header + "\n".join(t.markdown() for t in tables)
    latex = ("% Generated by scripts/make_tables.py (needs \\usepackage{booktabs})\n"
             + "\n".join(t.latex() for t in tables))
    return {"tables.md": markdown.encode(), "tables.tex": latex.encode(), "summary.csv": summary_csv(agg).encode(),
            "score_vs_params.png": plot(agg, paper)}


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
