"""Time one low-rank update, x -> k -> x, forward and backward, with its two factors in each memory
layout: what decided how LoRETTA lays out its factors (tt_linear.difference_factors, the rep layer's
A^T). On a CPU the BLAS's speed for a skinny product depends on which side is contiguous.

    OMP_NUM_THREADS=1 python scripts/bench_layouts.py [--tokens 1024] [--width 768] [--ranks 5 8 10 16]

Rows: widths k; columns: median milliseconds per forward+backward (rounds interleave the layouts)
and the ratio to LoRETTA's layout. "PEFT LoRA" is nn.Linear(d, k) then nn.Linear(k, d), as PEFT's
LoRA stores them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# each: (first factor's shape, second factor's shape, the update) for input width d, rank k
LAYOUTS = {
    "LoRETTA (A k x d, B k x d)": (lambda d, k: (k, d), lambda d, k: (k, d), lambda x, a, b: F.linear(x, a) @ b),
    "PEFT LoRA (A k x d, B d x k)": (lambda d, k: (k, d), lambda d, k: (d, k), lambda x, a, b: F.linear(F.linear(x, a), b)),
    "plain (A d x k, B k x d)": (lambda d, k: (d, k), lambda d, k: (k, d), lambda x, a, b: (x @ a) @ b),
}


def time_update(update, x, a, b, grad, steps: int) -> float:
    """Median milliseconds of `steps` forward+backward passes (two untimed first)."""
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        torch.autograd.backward(update(x, a, b), grad)
        if i >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(tokens: int, width: int, ranks, rounds: int, steps: int) -> dict[int, dict[str, float]]:
    torch.manual_seed(0)
    x = torch.randn(tokens, width, requires_grad=True)
    grad = torch.randn(tokens, width)
    results = {}
    for k in ranks:
        operands = {name: (torch.randn(*shape_a(width, k), requires_grad=True),
                           torch.randn(*shape_b(width, k), requires_grad=True), update)
                    for name, (shape_a, shape_b, update) in LAYOUTS.items()}
        samples = {name: [] for name in LAYOUTS}
        for _ in range(rounds):
            for name, (a, b, update) in operands.items():
                samples[name].append(time_update(update, x, a, b, grad, steps))
        results[k] = {name: statistics.median(values) for name, values in samples.items()}
    return results


def table(results, tokens: int, width: int) -> str:
    names = list(LAYOUTS)
    ours = names[0]
    lines = [f"{tokens} tokens x {width}, forward+backward of x -> k -> {width}, median ms (/ LoRETTA's layout)", "",
             "| k | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for k, row in results.items():
        cells = [f"{row[n]:.2f} ({row[n] / row[ours]:.2f}×)" for n in names]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--ranks", type=int, nargs="+", default=[5, 8, 10, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    for name in ("tokens", "width", "rounds", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if min(args.ranks) < 1:
        parser.error(f"--ranks must all be at least 1, got {args.ranks}")
    print(table(measure(args.tokens, args.width, args.ranks, args.rounds, args.steps), args.tokens, args.width))


if __name__ == "__main__":
    main()
