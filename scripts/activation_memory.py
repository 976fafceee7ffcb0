"""Where each method's activation memory goes: the bytes autograd saves for the backward pass of one
forward, by the type of module that saved them (one row per module type, one column per method).

    python scripts/activation_memory.py --preset deberta-base-cpu
    python scripts/activation_memory.py --preset llama-small-cpu --methods lora loretta_rep

Same models, shapes and method settings as scripts/bench_methods.py; deterministic (no timing), so
a CPU answers for any device up to the dtype. Parameters are not counted (every method holds them);
a storage is counted once, for the innermost module running when it was first saved.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from bench_methods import EXTRA_METHODS, METHODS, PRESETS, build_model, wrap


def saved_by_module_type(model, forward) -> dict[str, int]:
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    running: list[str] = []

    def enter(module, args):
        running.append(type(module).__name__)  # a hook's return value would replace the input: none

    def leave(module, args, output):
        running.pop()

    handles = [h for module in model.modules()
               for h in (module.register_forward_pre_hook(enter), module.register_forward_hook(leave))]
    seen: set[int] = set()
    by_type: dict[str, int] = defaultdict(int)

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            by_type[running[-1] if running else "(top level)"] += storage.nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = forward()
        del loss
    finally:
        for handle in handles:
            handle.remove()
    return dict(by_type)


def measure(preset_name: str, method: str) -> dict[str, int]:
    import torch

    preset = PRESETS[preset_name]
    torch.manual_seed(0)
    model = wrap(build_model(preset), method, preset)
    model.train()
    ids = torch.randint(5, model.config.vocab_size, (preset.batch, preset.length), device=preset.device)
    labels = torch.randint(0, 2, (preset.batch,), device=preset.device) if preset.task == "SEQ_CLS" else ids
    return saved_by_module_type(model, lambda: model(input_ids=ids, labels=labels).loss)


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="deberta-base-cpu", choices=sorted(PRESETS))
    parser.add_argument("--methods", nargs="+", choices=METHODS + EXTRA_METHODS,
                        default=["floor", "lora", "adapters", "loretta_adp", "loretta_rep", *EXTRA_METHODS])
    args = parser.parse_args(argv)
    print(markdown(args.preset, {m: measure(args.preset, m) for m in args.methods}))


if __name__ == "__main__":
    main()
