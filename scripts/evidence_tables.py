"""The README's evidence tables, from the committed run records (results/runs/**/results.json).

    python scripts/evidence_tables.py                 # Markdown to stdout

Method comparison: every method's best dev score over the learning rates tried (the paper's protocol
also reports the best validation score), with each lr's score beside it; ablations: LoRETTA variants.
Scores are mean ± std over seeds when there are several.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORDER = ["ft", "adapters", "lora", "lora_r4", "bitfit", "ia3", "prefix", "loretta_adp", "loretta_rep"]


def load(root: Path) -> list[dict]:
    records = []
    for path in sorted(root.rglob("results.json")):
        record = json.loads(path.read_text())
        if record.get("status") == "completed":
            records.append(record)
    return records


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def score(record: dict) -> float:
    return record["metrics"][record["primary_metric"]]


def comparison(records: list[dict], task: str) -> str:
    by = defaultdict(list)  # (method, variant-free lr, init) -> records
    for r in records:
        if r["task"] != task or r.get("experiment") not in ("evidence_glue", "evidence_ablation"):
            continue
        init = r["config"]["method"].get("init_method")
        variant = r.get("variant", "")
        if r.get("experiment") == "evidence_ablation" and "init-" not in variant:
            continue  # other ablations are in the second table
        by[(r["method"], init, r["lr"])].append(r)
    lrs = sorted({lr for (_, _, lr) in by})
    rows = sorted({(m, i) for (m, i, _) in by}, key=lambda k: (ORDER.index(k[0]) if k[0] in ORDER else 99, str(k[1])))
    lines = ["| method | init | trainable params | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best | minutes per run |",
             "|---|---|---:|" + "---:|" * len(lrs) + "---:|---:|"]
    for method, init in rows:
        cells, best, minutes, params = [], None, [], None
        for lr in lrs:
            group = by.get((method, init, lr), [])
            values = [score(r) for r in group]
            cells.append(fmt(values))
            if values and (best is None or statistics.mean(values) > statistics.mean(best)):
                best = values
            minutes += [r["train_time_s"] / 60 for r in group]
            params = params or (group[0]["trainable_params"] if group else None)
        lines.append(f"| {method} | {init or '—'} | {params:,} | " + " | ".join(cells) +
                     f" | **{fmt(best or [])}** | {statistics.mean(minutes):.1f} |")
    return "\n".join(lines)


def ablations(records: list[dict], task: str) -> str:
    rows = defaultdict(list)
    for r in records:
        if r["task"] != task or r.get("experiment") != "evidence_ablation" or "init-" in r.get("variant", ""):
            continue
        rows[(r["method"], r.get("variant", ""), r["trainable_params"])].append(score(r))
    lines = ["| method | setting | trainable params | score |", "|---|---|---:|---:|"]
    for (method, variant, params), values in sorted(rows.items()):
        lines.append(f"| {method} | {variant.lstrip('_')} | {params:,} | {fmt(values)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(REPO / "results" / "runs"))
    parser.add_argument("--task", default="sst2")
    args = parser.parse_args()
    records = load(Path(args.results))
    if not records:
        raise SystemExit(f"no completed results.json under {args.results}")
    print(comparison(records, args.task))
    print()
    print(ablations(records, args.task))


if __name__ == "__main__":
    main()
