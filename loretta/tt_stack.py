"""Many TT layers of one shape, their cores stacked along a leading dimension.

LoRETTA_rep gives each expert of a mixture-of-experts block its own factors (rep/experts.py): a few
hundred TT layers of one shape per block. Stored stacked, they are rebuilt with the same few batched
products as tt_batch.py uses for layers of one structure across a model, and are as many parameters
as the block has weights, not as it has experts.
"""

from __future__ import annotations

import torch
from torch import nn

from .tt_linear import FrozenCores, boundary_split, initialise_cores, stacked_matrix
from .tt_shapes import validate_tt_shape


class StackedTT(nn.Module):
    """`count` TT layers (in x out) of one shape: core i is (count, r_{i-1}, k_i, r_i), layer g's cores
    are [core[g] for core in cores]. Initialised as that many TTLinear layers would be."""

    def __init__(self, count: int, in_features: int, out_features: int, shape, rank: int, init: str, device=None):
        super().__init__()
        shape = tuple(int(k) for k in shape)
        validate_tt_shape(shape, in_features, out_features)
        self.count, self.in_features, self.out_features, self.shape, self.rank = (
            count, in_features, out_features, shape, rank)
        self.split = boundary_split(shape, in_features)
        ranks = [1] + [rank] * (len(shape) - 1) + [1]
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(count, ranks[i], k, ranks[i + 1], dtype=torch.float32, device=device))
            for i, k in enumerate(shape)
        )
        self.initial_cores = FrozenCores(self.cores) if init == "noise_reduction" else None
        if self.cores[0].device.type != "meta":  # built without weights (parameter counts): nothing to draw
            initialise_cores(self.cores, in_features, out_features, init, self.initial_cores)

    def matrices(self) -> torch.Tensor:
        """The (count x in x out) matrices."""
        return stacked_matrix(list(self.cores), self.in_features, self.out_features, self.split)

    def initial_matrices(self, negated: bool = False) -> torch.Tensor:
        """The initial cores' matrices (noise_reduction only), or their negatives; cached."""
        return self.initial_cores.stacked_matrices(self.in_features, self.out_features, self.split, negated)

    def extra_repr(self) -> str:
        return (f"count={self.count}, in={self.in_features}, out={self.out_features}, shape={list(self.shape)}, "
                f"rank={self.rank}")
