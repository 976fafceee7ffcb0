"""The README's evidence tables (issue 5), from the committed run records (results/runs/**/results.json).

    python scripts/evidence_tables.py                 # Markdown to stdout
    python scripts/evidence_tables.py --out results/tables/evidence.md
    python scripts/evidence_tables.py --readme README.md   # between the README's evidence markers

1. The learning-rate grid on SST-2 (every method, every lr tried; LoRETTA with each initialisation).
2. The encoder comparison: every method at its best SST-2 learning rate (chosen from the grid's seed-0
   runs, the rule the runs were launched with), on SST-2 / RTE / MRPC, mean ± std over seeds, beside
   the paper's DeBERTa-base numbers (Table 1).
3. LoRETTA ablations (rank, head, layer norms, TT shape), beside their baseline run.
4. Longer training: the dev score after every evaluation of the longer runs (evidence_longer), from each
   record's history, beside the same method's runs at the comparison's budget.
5. The decoder comparison (SmolLM2-135M, MeZO protocol), beside the paper's LLaMA-2-7B (Table 2).
6. The decoder learning-rate grid: seed 0 of every decoder task where two or more methods ran at several
   learning rates (method x lr, the best of each row in bold), so a method's lr can be read off at a glance.
7. A larger encoder: evidence_glue runs on any model but MiniLM (all-mpnet-base-v2 has DeBERTa-base's width
   and depth), each beside MiniLM's runs at the same setting and the paper's DeBERTa-base; omitted without any.
Tables 1-4 are MiniLM's.
Scores are percentages; "(n)" is the number of seeds when it is more than one. A table without runs is a line
naming the config that has their commands; a folder without any evidence run is an error, and nothing is written.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

import yaml
from make_tables import load_paper, write_atomic  # load_paper: (table, model, method, setting, task) -> score

REPO = Path(__file__).resolve().parents[1]
ORDER = ["zero-shot", "ft", "adapters", "lora", "lora_r4", "bitfit", "ia3", "prefix", "loretta_adp", "loretta_rep"]
ENCODER_TASKS = ["sst2", "rte", "mrpc"]
ENCODER_EXPERIMENTS = ("evidence_glue", "evidence_ablation")
EXPERIMENTS = (*ENCODER_EXPERIMENTS, "evidence_longer", "evidence_decoder")  # the runs these tables show
ENCODER_MODEL = "minilm"  # the encoder of tables 1-4; runs on other models go to the larger-encoder table
PAPER_ENCODER_NAMES = {"adapters": "adapters_r8"}  # our dense adapters beside the paper's "Adapters"


def load(root: Path) -> list[dict]:
    """Every completed run's record under `root`; a broken file is skipped with a message naming it (as
    make_tables does), not a traceback that hides every other run."""
    records = []
    for path in sorted(root.rglob("results.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        if isinstance(record, dict) and record.get("status") == "completed":
            records.append(record)
    return records


@functools.cache
def default_init(method: str) -> str | None:
    """The library's default initialisation, as the method config records it."""
    path = REPO / "configs" / "method" / f"{method}.yaml"
    return yaml.safe_load(path.read_text()).get("init_method") if path.is_file() else None


def score(record: dict) -> float:
    return 100 * record["metrics"][record["primary_metric"]]


def init_of(record: dict) -> str | None:
    return record["config"]["method"].get("init_method")


def fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return "—"
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f} ({len(values)})"


def minutes(group: list[dict]) -> str:
    return f"{statistics.mean(r['train_time_s'] for r in group) / 60:.1f}" if group else "—"


def setting_of(record: dict) -> str:
    """What a run changed beyond the lr, from its variant name ("_head-dense_lr3e-3" -> "head-dense")."""
    parts = record.get("variant", "").strip("_").split("_")
    return "_".join(part for part in parts if part and not part.startswith("lr"))


def is_base_setting(record: dict) -> bool:
    """A run of the method as configured (no ablation), whatever its initialisation and lr."""
    if record.get("experiment") == "evidence_glue":
        return not setting_of(record)
    variant = record.get("variant", "")
    return record.get("experiment") == "evidence_ablation" and variant.startswith("_init-") and "shape" not in variant


def grid_groups(records: list[dict], task: str, model: str = ENCODER_MODEL) -> dict:
    """(method, init, lr) -> records of the base setting on `task` with `model`."""
    by = defaultdict(list)
    for r in records:
        if (r["task"] == task and r["model"] == model and r.get("experiment") in ENCODER_EXPERIMENTS
                and is_base_setting(r)):
            by[(r["method"], init_of(r), r["lr"])].append(r)
    return by


def best_lrs(records: list[dict], task: str = "sst2", seed: int = 0) -> dict[str, float]:
    """method -> the lr with the best seed-`seed` score on `task`, at the method's default init."""
    best: dict[str, tuple[float, float]] = {}
    for (method, init, lr), group in grid_groups(records, task).items():
        if init != default_init(method):
            continue
        for r in group:
            if r["seed"] == seed and (method not in best or score(r) > best[method][1]):
                best[method] = (lr, score(r))
    return {m: lr for m, (lr, _) in best.items()}


def paper_deberta(paper: dict, method: str, what: str):
    """The paper's DeBERTa-base (Table 1) entry for our `method`: a task's score, or "params" (in M)."""
    return paper.get(("table1", "deberta-base", PAPER_ENCODER_NAMES.get(method, method), "", what))


def millions(value) -> str:
    return "—" if value is None else f"{value:g}M"


def order_key(method: str):
    return (ORDER.index(method) if method in ORDER else len(ORDER), method)


def table(header: list[str], align: str, rows: list[list[str]], empty: str) -> str:
    """A Markdown table: `header` over `rows` (lists of cells), column i left-aligned where align[i] is "l" and
    right-aligned (numbers) where it is "r"; `empty` (what to run) in place of a table without rows."""
    widths = {len(align), *map(len, rows)}
    if widths != {len(header)}:
        raise ValueError(f"a table of {len(header)} columns ({header}) with rows or alignments of {widths}")
    if not rows:
        return empty
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "".join("---|" if a == "l" else "---:|" for a in align),
                      *("| " + " | ".join(row) + " |" for row in rows)])


def run_them(experiment: str, none: str = "No runs yet") -> str:
    """In place of a table without runs: where their commands are."""
    return f"{none} (configs/experiment/{experiment}.yaml has the commands)."


def lr_grid(records: list[dict], task: str = "sst2") -> str:
    by = grid_groups(records, task)
    lrs = sorted({lr for (_, _, lr) in by})
    rows = sorted({(m, i) for (m, i, _) in by}, key=lambda k: (order_key(k[0]), str(k[1])))
    chosen = best_lrs(records, task)
    header = ["method", "init", "trainable params", *(f"lr {lr:g}" for lr in lrs), "minutes per run"]
    lines = []
    for method, init in rows:
        cells, group_all = [], []
        for lr in lrs:
            group = by.get((method, init, lr), [])
            cell = fmt([score(r) for r in group])
            chosen_here = chosen.get(method) == lr and init == default_init(method)
            cells.append(f"**{cell}**" if chosen_here and group else cell)
            group_all += group
        params = group_all[0]["trainable_params"]
        lines.append([method, init or "—", f"{params:,}", *cells, minutes(group_all)])
    return table(header, "llr" + "r" * len(lrs) + "r", lines, run_them("evidence_glue_minilm"))


def encoder_comparison(records: list[dict], paper: dict) -> str:
    chosen = best_lrs(records)
    header = ["method", "lr", "trainable params", "params / LoRA r=8", *(t.upper() for t in ENCODER_TASKS), "average",
              "minutes per run (SST-2 / RTE / MRPC)", "paper DeBERTa-base: params",
              *(f"paper {t.upper()}" for t in ENCODER_TASKS), "paper average"]
    lines = []
    groups = {t: grid_groups(records, t) for t in ENCODER_TASKS}
    lora_params = None
    rows = []
    for method in sorted(chosen, key=order_key):
        key = (method, default_init(method), chosen[method])
        per_task = [groups[t].get(key, []) for t in ENCODER_TASKS]
        params = next(g[0]["trainable_params"] for g in per_task if g)
        if method == "lora":
            lora_params = params
        rows.append((method, key, per_task, params))
    for method, key, per_task, params in rows:
        means = [statistics.mean(score(r) for r in g) for g in per_task if g]
        average = f"{statistics.mean(means):.1f}" if len(means) == len(ENCODER_TASKS) else "—"
        ratio = f"{params / lora_params:.2f}×" if lora_params else "—"
        paper_scores = [paper_deberta(paper, method, t) for t in ENCODER_TASKS]
        paper_avg = (f"{statistics.mean(paper_scores):.1f}" if all(s is not None for s in paper_scores) else "—")
        lines.append([method, f"{key[2]:g}", f"{params:,}", ratio, *(fmt([score(r) for r in g]) for g in per_task),
                      average, " / ".join(minutes(g) for g in per_task),
                      millions(paper_deberta(paper, method, "params")),
                      *("—" if s is None else f"{s:.1f}" for s in paper_scores), paper_avg])
    return table(header, "l" + "r" * (len(header) - 1), lines,
                 run_them("evidence_glue_minilm", "No method has a seed-0 SST-2 run at its default initialisation "
                                                  "yet, to choose its lr by"))


def ablations(records: list[dict], task: str = "sst2") -> str:
    base = grid_groups(records, task)
    rows = defaultdict(list)
    for r in records:
        if (r["task"] != task or r["model"] != ENCODER_MODEL or r.get("experiment") != "evidence_ablation"
                or is_base_setting(r)):
            continue
        rows[(r["method"], init_of(r), r["lr"], r.get("variant", ""), r["trainable_params"])].append(r)
    header = ["method", "init", "lr", "setting", "trainable params", "SST-2",
              "baseline (rank 5, tensorized head, trainable norms, default shape)"]
    lines = []
    for (method, init, lr, variant, params), group in sorted(rows.items(), key=lambda kv: (order_key(kv[0][0]), kv[0][1:4])):
        seeds = {r["seed"] for r in group}
        baseline = [score(r) for r in base.get((method, init, lr), []) if r["seed"] in seeds]
        lines.append([method, str(init), f"{lr:g}", setting_of(group[0]), f"{params:,}",
                      fmt([score(r) for r in group]), fmt(baseline)])
    return table(header, "llrlrrr", lines, run_them("evidence_ablation_minilm"))


def larger_encoders(records: list[dict], paper: dict) -> str:
    """evidence_glue runs on models other than MiniLM, beside MiniLM's at the same (task, method, init, lr,
    setting) and the paper's DeBERTa-base; "" if there are none. A run that changed something beyond
    the lr (its variant, e.g. "_head-dense_lr3e-3") is its own row, the setting named beside the method."""
    models = sorted({r["model"] for r in records if r.get("experiment") == "evidence_glue"} - {ENCODER_MODEL})
    if not models:
        return ""
    header = ["model", "task", "method", "lr", "trainable params", "params / LoRA r=8", "score", "MiniLM, same setting",
              "minutes per run", "paper DeBERTa-base: params", "paper score"]
    lines = []

    def key(r):
        return r["method"], init_of(r), r["lr"], "" if is_base_setting(r) else setting_of(r)

    for model in models:
        tasks = sorted({r["task"] for r in records if r["model"] == model and r.get("experiment") == "evidence_glue"},
                       key=lambda t: (ENCODER_TASKS.index(t) if t in ENCODER_TASKS else len(ENCODER_TASKS), t))
        for task in tasks:
            here, minilm = defaultdict(list), defaultdict(list)
            for r in records:
                if r["task"] == task and r["model"] == model and r.get("experiment") == "evidence_glue":
                    here[key(r)].append(r)
                elif r["task"] == task and r["model"] == ENCODER_MODEL and r.get("experiment") in ENCODER_EXPERIMENTS:
                    minilm[key(r)].append(r)
            lora = [g[0]["trainable_params"] for (m, _, _, setting), g in here.items() if m == "lora" and not setting]
            for (method, init, lr, setting), group in sorted(here.items(), key=lambda kv: (
                    order_key(kv[0][0]), kv[0][3], str(kv[0][1]), kv[0][2])):
                params = group[0]["trainable_params"]
                # the paper's entry is for the method as configured, not for a changed setting
                paper_score = None if setting else paper_deberta(paper, method, task)
                paper_params = "—" if setting else millions(paper_deberta(paper, method, "params"))
                named = f"{method} ({setting})" if setting else method
                lines.append([model, task, named, f"{lr:g}", f"{params:,}",
                              f"{params / lora[0]:.2f}×" if lora else "—", fmt([score(r) for r in group]),
                              fmt([score(r) for r in minilm.get((method, init, lr, setting), [])]),
                              minutes(group), paper_params, "—" if paper_score is None else f"{paper_score:.1f}"])
    return table(header, "lll" + "r" * 8, lines, "")


def dev_curve(record: dict) -> dict[int, float]:
    """step -> the dev score (primary metric, %) of each evaluation during training (the record's history)."""
    metric = record["primary_metric"]
    return {h["step"]: 100 * h[metric] for h in record.get("history", []) if metric in h}


def longer_training(records: list[dict]) -> str:
    by = defaultdict(list)
    for r in records:
        if r.get("experiment") == "evidence_longer" and r["model"] == ENCODER_MODEL:
            by[(r["task"], r["method"], r["lr"])].append(r)
    curves = {key: [dev_curve(r) for r in group] for key, group in by.items()}
    steps = sorted({step for group in curves.values() for curve in group for step in curve})
    header = ["task", "method", "lr", "trainable params", *(f"step {s}" for s in steps), "best (reported)",
              "at the comparison's budget", "minutes per run"]
    lines = []
    short_runs = {task: grid_groups(records, task) for (task, _, _) in by}  # the comparison's runs, per task
    for (task, method, lr), group in sorted(by.items(), key=lambda kv: (kv[0][0], order_key(kv[0][1]), kv[0][2])):
        cells = [fmt([c[s] for c in curves[(task, method, lr)] if s in c]) for s in steps]
        short = short_runs[task].get((method, default_init(method), lr), [])
        lines.append([task, method, f"{lr:g}", f"{group[0]['trainable_params']:,}", *cells,
                      fmt([score(r) for r in group]), fmt([score(r) for r in short]), minutes(group)])
    return table(header, "llrr" + "r" * len(steps) + "rrr", lines, run_them("evidence_longer_minilm"))


def decoder_groups(records: list[dict], seed: int | None = None) -> dict:
    """(task, method, lr) -> the decoder runs (of seed `seed`, or every seed)."""
    by = defaultdict(list)
    for r in records:
        if r.get("experiment") == "evidence_decoder" and seed in (None, r["seed"]):
            # `method=ft train.max_steps=0 variant=_zero-shot` (earlier `train.lr=0 train.max_steps=1`): the
            # untrained model through the same evaluation; no step is taken, so whatever lr it records is
            # no setting of it, and every zero-shot seed is one row at lr 0
            if r.get("variant") == "_zero-shot":
                by[(r["task"], "zero-shot", 0.0)].append(r)
            else:
                by[(r["task"], r["method"], r["lr"])].append(r)
    return by


def decoder_comparison(records: list[dict], paper: dict) -> str:
    by = decoder_groups(records)
    tasks = sorted({t for (t, _, _) in by})
    header = ["task", "train / test examples", "method", "lr", "trainable params", "test score", "minutes per run",
              "paper LLaMA-2-7B: params", "paper score"]
    lines = []
    for task in tasks:
        for (t, method, lr), group in sorted(by.items(), key=lambda kv: (order_key(kv[0][1]), kv[0][2])):
            if t != task:
                continue
            paper_score = paper.get(("table2", "llama2-7b", method, "", task))
            paper_params = paper.get(("table2", "llama2-7b", method, "", "params"))
            params = "0" if method == "zero-shot" else f"{group[0]['trainable_params']:,}"
            sizes = f"{group[0].get('num_train_examples', '—')} / {group[0].get('num_eval_examples', '—')}"
            lines.append([task, sizes, method, f"{lr:g}", params, fmt([score(r) for r in group]), minutes(group),
                          millions(paper_params), "—" if paper_score is None else f"{paper_score:g}"])
    return table(header, "lll" + "r" * 6, lines, run_them("evidence_decoder_smollm2"))


def decoder_lr_grid(records: list[dict], seed: int = 0) -> str:
    """Seed `seed` of each decoder task on which two or more methods ran at several lrs; "" if there is none."""
    by = {key: group for key, group in decoder_groups(records, seed).items() if key[1] != "zero-shot"}
    lrs_of = defaultdict(set)
    for task, method, lr in by:
        lrs_of[(task, method)].add(lr)
    methods_with_several_lrs = Counter(task for (task, _), lrs in lrs_of.items() if len(lrs) > 1)
    tasks = sorted(task for task, count in methods_with_several_lrs.items() if count > 1)
    if not tasks:
        return ""
    lrs = sorted({lr for (t, _, lr) in by if t in tasks})
    header = ["task", "method", "trainable params", *(f"lr {lr:g}" for lr in lrs), "minutes per run"]
    lines = []
    for task, method in sorted((k for k in lrs_of if k[0] in tasks), key=lambda k: (k[0], order_key(k[1]))):
        scores = {lr: score(by[(task, method, lr)][0]) for lr in lrs_of[(task, method)]}
        best = max(scores.values())
        cells = ["—" if lr not in scores else (f"**{scores[lr]:.1f}**" if len(scores) > 1 and scores[lr] == best
                                               else f"{scores[lr]:.1f}") for lr in lrs]
        group = [r for lr in scores for r in by[(task, method, lr)]]
        lines.append([task, method, f"{group[0]['trainable_params']:,}", *cells, minutes(group)])
    return table(header, "llr" + "r" * len(lrs) + "r", lines, "")


def render(records: list[dict], paper: dict) -> str:
    sections = [
        "### SST-2 learning-rate grid (bold: the lr each method is compared at)", lr_grid(records),
        "### Encoder comparison (each method at its best SST-2 lr)", encoder_comparison(records, paper),
        "### LoRETTA ablations on SST-2", ablations(records),
        "### Longer training (dev score after each evaluation; each method at its comparison lr)",
        longer_training(records),
        "### Decoder comparison (SmolLM2-135M, MeZO protocol)", decoder_comparison(records, paper),
    ]
    grid = decoder_lr_grid(records)
    if grid:
        sections += ["### Decoder learning-rate grid (seed 0; bold: each method's best lr)", grid]
    larger = larger_encoders(records, paper)
    if larger:
        sections += ["### A larger encoder (MiniLM's protocol; MiniLM's score at the same setting beside)", larger]
    return "\n\n".join(sections) + "\n"


START, END = "<!-- evidence-tables:start -->", "<!-- evidence-tables:end -->"


def splice(document: str, tables: str) -> str:
    """`document` with the text between the START and END markers replaced by `tables`."""
    if document.count(START) != 1 or document.count(END) != 1 or document.index(START) > document.index(END):
        raise ValueError(f"expected one {START} line followed by one {END} line")
    head, rest = document.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{tables.strip()}\n{END}{tail}"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(REPO / "results" / "runs"))
    parser.add_argument("--paper", default=str(REPO / "results" / "paper" / "paper_results.csv"))
    parser.add_argument("--out", help="write the Markdown here (atomically) instead of stdout")
    parser.add_argument("--readme", help=f"replace the tables between {START} and {END} in this file")
    args = parser.parse_args(argv)
    records = load(Path(args.results))
    if not records:
        print(f"no completed results.json under {args.results}", file=sys.stderr)
        return 1
    records = [r for r in records if r.get("experiment") in EXPERIMENTS]
    if not records:
        print(f"no evidence runs (experiment {', '.join(EXPERIMENTS[:-1])} or {EXPERIMENTS[-1]}) among the "
              f"completed runs under {args.results}; nothing written", file=sys.stderr)
        return 1
    text = render(records, load_paper(Path(args.paper)))
    if args.readme:
        readme = Path(args.readme)
        try:
            write_atomically(readme, splice(readme.read_text(), text))
        except ValueError as err:
            print(f"{readme}: {err}", file=sys.stderr)
            return 1
    if args.out:
        write_atomically(Path(args.out), text)
    if not args.readme and not args.out:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
