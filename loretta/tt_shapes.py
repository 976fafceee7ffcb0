"""Tensor-train mode shapes: which tensor a weight matrix of shape in x out is reshaped into.

A matrix W (in x out) is flattened row-major and viewed as a tensor with modes k_1..k_d whose
product is in*out. We compute shapes for any size; a small table pins the sizes the paper used so
that its parameter counts are reproduced exactly (DESIGN.md section 2).
"""

from __future__ import annotations

import math
from functools import lru_cache

# (in, out) -> modes. These are the shapes that produce the paper's published parameter counts
# (the released code's shapes). Where the paper's Table 10 prints a different shape for the same
# size, the Table 10 variant is noted; pass it explicitly through `tt_shapes` to use it.
KNOWN_SHAPES: dict[tuple[int, int], tuple[int, ...]] = {
    # LoRETTA_adp bottleneck 64 (BERT-base family and LLaMA-2-7B)
    (768, 64): (8, 8, 12, 8, 8),
    (64, 768): (8, 8, 12, 8, 8),
    (4096, 64): (16, 16, 16, 4, 4, 4),
    (64, 4096): (4, 4, 4, 16, 16, 16),
    # tensorized classification head (Table 10 prints 768x768 as [12, 8, 8, 8, 8, 12])
    (768, 768): (8, 8, 12, 12, 8, 8),
    (4096, 4096): (8, 8, 8, 8, 8, 8, 8, 8),
    # LoRETTA_rep factors, r = 8 and 16
    (768, 8): (8, 8, 12, 8),
    (8, 768): (8, 12, 8, 8),
    (8, 2304): (8, 8, 8, 4, 9),  # DeBERTa v1 fused in_proj
    (4096, 8): (16, 16, 8, 4, 4),  # Table 10 prints [8, 8, 8, 8, 8]
    (8, 4096): (16, 16, 8, 4, 4),  # Table 10 prints [8, 8, 8, 8, 8]
    (768, 16): (8, 8, 12, 4, 4),
    (4096, 16): (8, 8, 8, 8, 4, 4),
}

# Rule for every other size: split each side into modes close to 8, kept within [4, 12] when the
# number allows it (Table 7: modes that are too small hurt accuracy; the paper's shapes use 4..16).
_PREFERRED_MODE = 8
_MIN_MODE, _MAX_MODE = 4, 12
_OUT_OF_RANGE_PENALTY = 10.0


def _mode_cost(k: int) -> float:
    cost = (math.log2(k) - math.log2(_PREFERRED_MODE)) ** 2
    if k < _MIN_MODE or k > _MAX_MODE:
        cost += _OUT_OF_RANGE_PENALTY
    return cost


@lru_cache(maxsize=None)
def factor_modes(n: int) -> tuple[int, ...]:
    """Factor n into modes (ascending) minimising the distance of each mode from 8.

    Prime factors larger than the preferred range become modes of their own (unavoidable).
    """
    if n < 1:
        raise ValueError(f"cannot factor {n!r} into tensor modes: it must be a positive integer")
    if n == 1:
        return ()
    best: tuple[float, tuple[int, ...]] | None = None
    for d in range(2, n + 1):
        if n % d:
            continue
        rest = factor_modes(n // d)
        cost = _mode_cost(d) + sum(_mode_cost(k) for k in rest)
        candidate = (cost, tuple(sorted((d, *rest))))
        if best is None or candidate < best:
            best = candidate
    assert best is not None
    return best[1]


def default_tt_shape(in_features: int, out_features: int) -> tuple[int, ...]:
    """The TT modes for a weight of shape in_features x out_features.

    The first modes multiply to in_features and the last to out_features; larger modes sit in the
    middle (in-side ascending, out-side descending), as in the paper's shapes.
    """
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    known = KNOWN_SHAPES.get((in_features, out_features))
    if known is not None:
        return known
    return factor_modes(in_features) + tuple(reversed(factor_modes(out_features)))


def shape_key(in_features: int, out_features: int) -> str:
    """The key of a size in a user's `tt_shapes` mapping, e.g. '768x64'."""
    return f"{in_features}x{out_features}"


def resolve_tt_shape(
    in_features: int, out_features: int, overrides: dict[str, list[int]] | None = None
) -> tuple[int, ...]:
    """The user's shape for this size if given (validated), else the default."""
    if overrides:
        key = shape_key(in_features, out_features)
        if key in overrides:
            shape = tuple(overrides[key])
            validate_tt_shape(shape, in_features, out_features)
            return shape
    return default_tt_shape(in_features, out_features)


def validate_tt_shape(shape, in_features: int, out_features: int) -> None:
    if not shape or not all(isinstance(k, int) and k >= 1 for k in shape):
        raise ValueError(
            f"TT shape {list(shape) if shape else shape!r} for a {in_features}x{out_features} weight is invalid: "
            "it must be a non-empty list of positive integers"
        )
    product = math.prod(shape)
    if product != in_features * out_features:
        raise ValueError(
            f"TT shape {list(shape)} has product {product}, but a {in_features}x{out_features} weight needs modes "
            f"whose product is {in_features * out_features} (e.g. {list(default_tt_shape(in_features, out_features))})"
        )


def validate_tt_shapes_mapping(tt_shapes) -> dict[str, list[int]] | None:
    """Check a user's `tt_shapes` mapping {'INxOUT': [modes]} before any model is touched; the same mapping
    with each key written as shape_key writes it ('768X064' -> '768x64'), the form layers look up."""
    if tt_shapes is None:
        return None
    if not isinstance(tt_shapes, dict):
        raise ValueError(f"tt_shapes must be a mapping like {{'768x64': [8, 8, 12, 8, 8]}}, got {tt_shapes!r}")
    canonical: dict[str, list[int]] = {}
    for key, shape in tt_shapes.items():
        parts = str(key).strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"tt_shapes key {key!r} is invalid: expected 'INxOUT' such as '768x64'")
        in_features, out_features = int(parts[0]), int(parts[1])
        validate_tt_shape(tuple(shape) if isinstance(shape, (list, tuple)) else shape, in_features, out_features)
        size = shape_key(in_features, out_features)
        if size in canonical:
            raise ValueError(f"tt_shapes gives the size {size} twice (key {key!r}): give one shape per size")
        canonical[size] = list(shape)
    return canonical


def tt_num_params(shape, rank: int) -> int:
    """Parameters of TT cores with all inner ranks equal to `rank` (r_0 = r_d = 1)."""
    ranks = [1] + [rank] * (len(shape) - 1) + [1]
    return sum(ranks[i] * k * ranks[i + 1] for i, k in enumerate(shape))
