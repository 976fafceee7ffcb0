"""A linear map whose weight matrix is stored as tensor-train cores.

The weight W (in x out) is the row-major reshape of the TT tensor G_1 x ... x G_d, G_i of shape
(r_{i-1}, k_i, r_i). Cores stay fp32 whatever the activations' dtype (bf16 reconstruction loses
about 5e-3 relative, DESIGN.md section 4); the rebuilt matrix is cast to the input's dtype.
Forward rebuilds W and does one matmul: for adapter-sized matrices this beat contracting the input
through the cores one by one (DESIGN.md section 4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .tt_shapes import validate_tt_shape

# "noise_reduction": Gaussian cores, minus the frozen initial product (output unchanged at step 0,
#                    every core receives gradient from the first step: the paper's stated method)
# "identity":        the last core of the output-side factor is zero (output unchanged at step 0)
# "gaussian":        the released code's Gaussian cores (output changes at step 0)
INIT_METHODS = ("noise_reduction", "identity", "gaussian")


def _chain(cores) -> torch.Tensor:
    """Contract cores left to right into a (prod(k), r_last) matrix."""
    out = cores[0].reshape(-1, cores[0].shape[-1])  # (k_1, r_1)
    for core in cores[1:]:
        r_in, k, r_out = core.shape
        out = (out @ core.reshape(r_in, k * r_out)).reshape(-1, r_out)
    return out


def _chain_right(cores) -> torch.Tensor:
    """Contract cores right to left into an (r_first, prod(k)) matrix, modes in row-major order."""
    out = cores[-1].reshape(cores[-1].shape[0], -1)  # (r, k_d)
    for core in reversed(cores[:-1]):
        r_in, k, r_out = core.shape
        out = (core.reshape(r_in * k, r_out) @ out).reshape(r_in, -1)
    return out


def tt_factors(cores, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L (in x r), R (r x out)) from the cores before and from `split` (the in/out boundary)."""
    return _chain(cores[:split]), _chain_right(cores[split:])


def tt_to_matrix(cores, in_features: int, out_features: int, split: int | None) -> torch.Tensor:
    """Rebuild the (in x out) matrix from TT cores.

    When the first `split` modes multiply to in_features, W = L @ R with L (in x r) from the
    left cores and R (r x out) from the right cores: one rank-r matmul writes W directly.
    """
    if split is None:
        return _chain(cores).reshape(in_features, out_features)
    left, right = tt_factors(cores, split)
    return left @ right


def boundary_split(shape, in_features: int) -> int | None:
    """Index of the first out-side mode if the modes split cleanly at the in/out boundary."""
    product = 1
    for i, k in enumerate(shape):
        if product == in_features and 0 < i:
            return i
        product *= k
    return None


class FrozenCores(nn.Module):
    """Copies of the initial TT cores as (saved) buffers, and what is rebuilt from them, cached."""

    def __init__(self, cores):
        super().__init__()
        for i, core in enumerate(cores):
            self.register_buffer(str(i), core.detach().clone())
        self._cache_key = None
        self._cache = None

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, str(i)) for i in range(len(self._buffers))]

    def _cached(self, what: str, build):
        cores = self.tensors()
        if torch.compiler.is_compiling():
            # the cache key compares data pointers, which torch.compile cannot trace (a graph break
            # per layer); compiled, the rebuild is part of the graph (a few small products)
            with torch.no_grad():
                return build(cores)
        # rebuilt only when the buffers change (loading, moving to another device)
        key = (what, *((c.data_ptr(), c._version, c.device) for c in cores))
        if key != self._cache_key:
            with torch.no_grad():
                self._cache = build(cores)
            self._cache_key = key
        return self._cache

    def matrix(self, in_features: int, out_features: int, split) -> torch.Tensor:
        """The dense (in x out) initial matrix."""
        return self._cached("matrix", lambda cores: tt_to_matrix(cores, in_features, out_features, split))

    def factors(self, split: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(L0 (in x r), R0 (r x out)), the initial matrix's factors at the in/out boundary: r / out
        (and r / in) of the dense matrix's memory."""
        return self._cached("factors", lambda cores: tt_factors(cores, split))


class TTLinear(nn.Module):
    """y = x @ W + b with W stored as TT cores of rank `rank`.

    init="gaussian" follows the released code: each core ~ N(0, 1) / sqrt(r_i) * s^(1/d), so that
    W has entries of std s = sqrt(1 / (in + out)). init="identity" makes the last core zero, so W = 0
    at step 0 (the gradient reaches that core first, as with LoRA's zero B). init="noise_reduction"
    keeps the Gaussian cores and a frozen copy of them (`initial_cores`); with
    subtract_initial=True, W = TT(cores) - TT(initial cores), which is 0 at step 0 while every core
    gets gradient from the first step. (LoRETTA_rep removes the initial product A0 @ B0 instead, so it
    keeps the copies without subtracting them here.)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        shape,
        rank: int,
        bias: bool = True,
        init: str = "gaussian",
        dtype: torch.dtype = torch.float32,
        device=None,
        subtract_initial: bool = True,
    ):
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"tensor_rank must be a positive integer, got {rank!r}")
        if init not in INIT_METHODS:
            raise ValueError(f"init_method {init!r} is not one of {list(INIT_METHODS)}")
        shape = tuple(int(k) for k in shape)
        validate_tt_shape(shape, in_features, out_features)
        self.in_features = in_features
        self.out_features = out_features
        self.shape = shape
        self.rank = rank
        self.split = boundary_split(shape, in_features)
        ranks = [1] + [rank] * (len(shape) - 1) + [1]
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(ranks[i], k, ranks[i + 1], dtype=dtype, device=device))
            for i, k in enumerate(shape)
        )
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        self.initial_cores = FrozenCores(self.cores) if init == "noise_reduction" else None
        self.subtract_initial = subtract_initial
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "gaussian") -> None:
        if self.cores[0].device.type == "meta":
            return
        target_std = math.sqrt(1.0 / (self.in_features + self.out_features))
        per_core = target_std ** (1.0 / len(self.cores))
        for core in self.cores:
            core.normal_(0.0, 1.0).mul_(per_core / math.sqrt(core.shape[-1]))
        if init == "identity":
            self.cores[-1].zero_()
        if self.initial_cores is not None:
            for frozen, core in zip(self.initial_cores.tensors(), self.cores):
                frozen.copy_(core)
        if self.bias is not None:
            self.bias.zero_()

    def raw_matrix(self) -> torch.Tensor:
        """TT(cores) as an (in x out) matrix, in the cores' dtype."""
        return tt_to_matrix(list(self.cores), self.in_features, self.out_features, self.split)

    def initial_matrix(self) -> torch.Tensor:
        """TT(initial cores) (noise_reduction only), cached."""
        return self.initial_cores.matrix(self.in_features, self.out_features, self.split)

    def weight_matrix(self) -> torch.Tensor:
        """The effective dense (in x out) matrix, in the cores' dtype."""
        if self.initial_cores is None or not self.subtract_initial:
            return self.raw_matrix()
        if self.split is None:
            return self.raw_matrix() - self.initial_matrix()
        # the initial product is rebuilt from its cached factors, not cached densely (for a
        # 4096 x 64 adapter matrix: 84 KB instead of 1 MB); same operations on the same values as
        # the trained product, so W is exactly 0 at step 0
        left, right = tt_factors(list(self.cores), self.split)
        left0, right0 = self.initial_cores.factors(self.split)
        with torch.no_grad():
            initial = left0 @ right0
        return left @ right - initial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_matrix().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight.t(), bias)

    def to_dense_linear(self) -> nn.Linear:
        """An nn.Linear computing the same map (used when unloading a tensorized head)."""
        with torch.no_grad():
            weight = self.weight_matrix()
            linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
            linear.to(device=weight.device, dtype=weight.dtype)
            linear.weight.copy_(weight.t())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, shape={list(self.shape)}, rank={self.rank}"
