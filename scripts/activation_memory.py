"""Where each method's activation memory goes: the bytes autograd saves for the backward pass of one
forward, by the type of module that saved them (one row per module type, one column per method).

    python scripts/activation_memory.py --preset deberta-base-cpu
    python scripts/activation_memory.py --preset llama-small-cpu --methods lora loretta_rep

Same models, shapes and method settings as scripts/bench_methods.py; deterministic (no timing), so
a CPU answers for any device up to the dtype and the attention kernel the device picks. Parameters
are not counted (every method holds them); a storage is counted once, for the innermost module
running when it was first saved.

    python scripts/activation_memory.py --from-bench results/bench/llama2-7b-gpu.json

renders the same table from what bench_methods.py measured (it records this breakdown for each
method): no second model per method, which on a GPU preset costs a worker and a 7B model each.
"""

from __future__ import annotations

import argparse
import json

from bench_methods import (EXTRA_METHODS, METHODS, PRESETS, build_model, make_batch, run_in_worker_process,
                           saved_by_module_type, wrap)


def measure(preset_name: str, method: str) -> dict[str, int]:
    import torch

    preset = PRESETS[preset_name]
    torch.manual_seed(0)
    model = wrap(build_model(preset), method, preset)
    model.train()
    ids, labels = make_batch(model, preset)
    return saved_by_module_type(model, lambda: model(input_ids=ids, labels=labels).loss)


def measure_in_subprocess(preset_name: str, method: str) -> dict[str, int]:
    """One process per method, as bench_methods does: a process's memory is not all returned when a
    model is dropped, so measuring nine DeBERTa-base models in one process needs ~12 GB."""
    return run_in_worker_process(__file__, ["--preset", preset_name, "--worker", method],
                                 f"measuring {method} on {preset_name}")


def markdown(preset_name: str, table: dict[str, dict[str, int]]) -> str:
    methods = list(table)
    types = sorted({t for column in table.values() for t in column},
                   key=lambda t: -max(column.get(t, 0) for column in table.values()))
    mib = lambda b: f"{b / 2**20:.1f}" if b else "—"  # noqa: E731
    p = PRESETS[preset_name]
    lines = [f"{preset_name}: {p.model_type} {p.dtype}, batch {p.batch}x{p.length}: MiB saved for backward",
             "", "| module type | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for t in types:
        lines.append(f"| {t} | " + " | ".join(mib(table[m].get(t, 0)) for m in methods) + " |")
    lines.append("| **total** | " + " | ".join(f"**{mib(sum(table[m].values()))}**" for m in methods) + " |")
    return "\n".join(lines)


def from_bench(path: str) -> str:
    """The table from a bench_methods.py --out JSON: its methods that were measured (the breakdown is
    recorded with each row), the others listed below it."""
    with open(path) as f:
        bench = json.load(f)
    table = {r["method"]: r["saved_by_module_type"] for r in bench["rows"] if r.get("saved_by_module_type") is not None}
    missing = [r["method"] for r in bench["rows"] if r.get("saved_by_module_type") is None]
    text = markdown(bench["preset"], table) if table else f"{bench['preset']}: no method was measured"
    return text + (f"\n\nNot measured: {', '.join(missing)}" if missing else "")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="deberta-base-cpu", choices=sorted(PRESETS))
    parser.add_argument("--methods", nargs="+", choices=METHODS + EXTRA_METHODS,
                        default=["floor", "lora", "adapters", "loretta_adp", "loretta_rep", *EXTRA_METHODS])
    parser.add_argument("--from-bench", metavar="JSON",
                        help="render the table from bench_methods.py's --out JSON instead of measuring")
    parser.add_argument("--worker", choices=METHODS + EXTRA_METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.from_bench:
        print(from_bench(args.from_bench))
        return
    if args.worker:
        print(json.dumps(measure(args.preset, args.worker)))
        return
    print(markdown(args.preset, {m: measure_in_subprocess(args.preset, m) for m in args.methods}))


if __name__ == "__main__":
    main()
