"""A linear map whose weight matrix is stored as tensor-train cores.

The weight W (in x out) is the row-major reshape of the TT tensor G_1 x ... x G_d, G_i of shape
(r_{i-1}, k_i, r_i). Cores stay fp32 whatever the activations' dtype (bf16 reconstruction loses
about 5e-3 relative, DESIGN.md section 4); the rebuilt matrix is cast to the input's dtype.
When the modes split at the in/out boundary, W = L @ R with L (in x r) the product of the input-side
cores and R (r x out) that of the output-side ones: W has rank r. The forward then multiplies the
input by the two factors, r * (in + out) multiply-adds per token instead of in * out (for a 768 x 64
adapter projection at rank 5: 4,160 instead of 49,152). That is on a CPU, where the arithmetic is
the cost; on a GPU the two products launch more kernels than the one matmul by the rebuilt W, and
the matmul is kept (`forward=` / the configs' `tt_forward`).
Either way W or its factors are built from the cores once per forward; contracting the input
through the cores one by one was 2-10x slower for these sizes (DESIGN.md section 4).
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

# How forward() multiplies: "factors": x @ L @ R (needs modes that split at the in/out boundary);
# "matrix": x @ W with W rebuilt; "auto": factors on a CPU where they take fewer multiply-adds, the
# matrix on accelerators (fewer kernel launches; the GPU benchmark's loretta_adp_factors row measures both)
FORWARD_MODES = ("auto", "factors", "matrix")


# The products below take cores stacked along a leading dimension: (G, r_in, k, r_out) for G TT
# layers of one structure, so that tt_batch.py rebuilds many layers with the same few batched
# products; a single layer is the case G = 1.


def _chain(cores) -> torch.Tensor:
    """Contract stacked cores left to right into (G, prod(k), r_last) matrices."""
    out = cores[0].reshape(cores[0].shape[0], -1, cores[0].shape[-1])  # (G, k_1, r_1)
    for core in cores[1:]:
        g, r_in, k, r_out = core.shape
        out = torch.bmm(out, core.reshape(g, r_in, k * r_out)).reshape(g, -1, r_out)
    return out


def _chain_right(cores) -> torch.Tensor:
    """Contract stacked cores right to left into (G, r_first, prod(k)) matrices, modes in row-major order."""
    out = cores[-1].reshape(cores[-1].shape[0], cores[-1].shape[1], -1)  # (G, r, k_d)
    for core in reversed(cores[:-1]):
        g, r_in, k, r_out = core.shape
        out = torch.bmm(core.reshape(g, r_in * k, r_out), out).reshape(g, r_in, -1)
    return out


def stacked_factors(cores, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L (G x in x r), R (G x r x out)) from the stacked cores before and from `split`."""
    return _chain(cores[:split]), _chain_right(cores[split:])


def stacked_matrix(cores, in_features: int, out_features: int, split: int | None) -> torch.Tensor:
    """Rebuild the (G x in x out) matrices from stacked TT cores.

    When the first `split` modes multiply to in_features, W = L @ R with L (in x r) from the left
    cores and R (r x out) from the right cores: one rank-r product writes W directly.
    """
    if split is None:
        return _chain(cores).reshape(-1, in_features, out_features)
    left, right = stacked_factors(cores, split)
    return torch.bmm(left, right)


def difference_factors(left, right, left0=None, right0=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Lt (.. x k x in), R (.. x k x out)) with Lt^T @ R = L @ R - L0 @ R0 (k = 2r), or L @ R
    (k = r) without initial factors. [L - L0 | L0] @ [R ; R - R0] rather than [L | L0] @ [R ; -R0]:
    the same product, but exactly 0 while L = L0 and R = R0 (step 0), as the rebuilt matrix is.
    L is returned transposed, (k x in) contiguous as an nn.Linear weight: x @ L in that layout, and
    its backward, ran 2-3x faster on this project's CPU than with L stored (in x k)."""
    if left0 is None:
        return left.mT.contiguous(), right
    left_t = torch.cat([(left - left0).mT, left0.mT], dim=-2)
    return left_t, torch.cat([right, right - right0], dim=-2)


def tt_factors(cores, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L (in x r), R (r x out)) of one TT layer."""
    left, right = stacked_factors([c.unsqueeze(0) for c in cores], split)
    return left[0], right[0]


def tt_to_matrix(cores, in_features: int, out_features: int, split: int | None) -> torch.Tensor:
    """Rebuild one TT layer's (in x out) matrix."""
    return stacked_matrix([c.unsqueeze(0) for c in cores], in_features, out_features, split)[0]


def boundary_split(shape, in_features: int) -> int | None:
    """Index of the first out-side mode if the modes split cleanly at the in/out boundary."""
    product = 1
    for i, k in enumerate(shape):
        if product == in_features and 0 < i:
            return i
        product *= k
    return None


# Weights changed through `.data` (`p.data.copy_(ema)`, DeepSpeed's copy from its master weights, hand-written
# optimizers) keep their _version, so the state key below cannot see the change. Every model forward that starts
# afresh (all but a step that continues a KV cache: each new token of generate) therefore begins a new epoch
# (tt_batch's pre-hook), which is part of the key: what is held is rebuilt once per evaluation batch or
# generate() call, and reused only across one generation's tokens.
_weights_epoch = 0


def begin_weights_epoch() -> None:
    global _weights_epoch
    _weights_epoch += 1


def graph_wanted(cores_train: bool) -> bool:
    """Whether the forward about to run builds an autograd graph through the TT cores."""
    return torch.is_grad_enabled() and cores_train


# The model forward in progress, wanting no graph, whose pre-hook (tt_batch) has just checked its TT
# layers' held operands against their cores: each layer it checked is marked with this token and uses
# what it holds without checking again (each token of generate: one check per layer, not two). The
# model's forward hook clears it, so a layer called on its own afterwards (the cores may have changed
# since) checks as before; None outside such a forward. Another forward starting meanwhile (a nested
# model, another thread) replaces the token, which only makes the first one's layers check again.
_checked_pass: object | None = None


def begin_checked_pass() -> None:
    global _checked_pass
    _checked_pass = object() if not torch.is_grad_enabled() else None


def end_checked_pass() -> None:
    global _checked_pass
    _checked_pass = None


def current_checked_pass() -> object | None:
    """The token to mark a layer with once its held operands are checked in this forward (None: don't)."""
    return _checked_pass


def checked_in_this_pass(mark) -> bool:
    return mark is not None and mark is _checked_pass and not torch.is_grad_enabled()


_current_autograd_node = getattr(torch._C, "_current_autograd_node", None)  # private: a torch without it is not detected


def _in_reentrant_checkpoint_backward() -> bool:
    """Whether this runs in the backward of a reentrant checkpoint (torch.utils.checkpoint with
    use_reentrant=True, DeepSpeed's): it recomputes the checkpointed forward and back-propagates through
    the recomputation with a backward call of its own."""
    node = _current_autograd_node() if _current_autograd_node is not None else None
    return node is not None and node.name().endswith("CheckpointFunctionBackward")


def held_is_stale(held_state, current_state, operand: torch.Tensor, cores_train: bool) -> bool:
    """Whether something built from TT cores ahead of use (tt_batch) may no longer stand in for a fresh
    build: the tensors it came from changed since (an optimizer step, a load), it was built without
    a graph (under no_grad) and gradients are wanted now, or a reentrant checkpoint is recomputing its
    layer: that one's own backward call would run through (and free) the graph of what was built for
    all layers together before the forward, and the next checkpointed layer's backward would fail
    ("Trying to backward through the graph a second time"); a fresh build keeps that graph in the layer."""
    if held_state != current_state:
        return True
    if not graph_wanted(cores_train):
        return False
    return operand.grad_fn is None or _in_reentrant_checkpoint_backward()


class FrozenCores(nn.Module):
    """Copies of the initial TT cores as (saved) buffers, and what is rebuilt from them, cached."""

    def __init__(self, cores):
        super().__init__()
        for i, core in enumerate(cores):
            self.register_buffer(str(i), core.detach().clone())
        self._cache_key = None
        self._cache = None

    def tensors(self) -> list[torch.Tensor]:
        return list(self._buffers.values())  # registered in order "0", "1", ...; .to() and loading keep it

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

    def negated_matrix(self, in_features: int, out_features: int, split) -> torch.Tensor:
        """-(the dense initial matrix): LoRETTA_rep's -B0, negated once rather than at every forward
        (one operator per layer and step; the cache holds one form, and a rep B layer asks only for this)."""
        return self._cached("negated_matrix", lambda cores: -tt_to_matrix(cores, in_features, out_features, split))

    def stacked_matrices(self, in_features: int, out_features: int, split, negated: bool = False) -> torch.Tensor:
        """Cores with a leading stack dimension (G, r_in, k, r_out): the G initial (in x out) matrices, or
        their negatives (LoRETTA_rep's -B0 of each expert)."""
        def build(cores):
            matrices = stacked_matrix(cores, in_features, out_features, split)
            return -matrices if negated else matrices

        return self._cached(("stacked", negated), build)

    def factors(self, split: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(L0 (in x r), R0 (r x out)), the initial matrix's factors at the in/out boundary: r / out
        (and r / in) of the dense matrix's memory."""
        return self._cached("factors", lambda cores: tt_factors(cores, split))


@torch.no_grad()
def initialise_cores(cores, in_features: int, out_features: int, init: str, initial_cores=None) -> None:
    """The released code's Gaussian cores (each ~ N(0, 1) / sqrt(r_i) * s^(1/d), so that W has entries of std
    s = sqrt(1 / (in + out))); init="identity" then zeroes the last core; `initial_cores` (FrozenCores) get a copy.
    Cores may carry a leading stack dimension (G, r_in, k, r_out): G layers initialised alike."""
    target_std = math.sqrt(1.0 / (in_features + out_features))
    per_core = target_std ** (1.0 / len(cores))
    for core in cores:
        core.normal_(0.0, 1.0).mul_(per_core / math.sqrt(core.shape[-1]))
    if init == "identity":
        cores[-1].zero_()
    if initial_cores is not None:
        for frozen, core in zip(initial_cores.tensors(), cores):
            frozen.copy_(core)


class TTLinear(nn.Module):
    """y = x @ W + b with W stored as TT cores of rank `rank`.

    init="gaussian" follows the released code: each core ~ N(0, 1) / sqrt(r_i) * s^(1/d), so that
    W has entries of std s = sqrt(1 / (in + out)). init="identity" makes the last core zero, so W = 0
    at step 0 (the gradient reaches that core first, as with LoRA's zero B). init="noise_reduction"
    keeps the Gaussian cores and a frozen copy of them (`initial_cores`); with
    subtract_initial=True, W = TT(cores) - TT(initial cores), which is 0 at step 0 while every core
    gets gradient from the first step. (LoRETTA_rep removes the initial product A0 @ B0 instead, so it
    keeps the copies without subtracting them here.)

    forward (FORWARD_MODES): how forward() multiplies, see the module docstring; it changes the
    arithmetic, not the map (the two agree within fp32 rounding).

    dense_dtype: the dtype of the nn.Linear that `to_dense_linear` gives (a tensorized head unloads to
    a layer like the one it replaced, in the model's dtype); default the cores' (float32).
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
        forward: str = "auto",
        dense_dtype: torch.dtype | None = None,
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
        if forward not in FORWARD_MODES:
            raise ValueError(f"tt_forward {forward!r} is not one of {list(FORWARD_MODES)}")
        if forward == "factors" and self.split is None:
            raise ValueError(
                f"tt_forward='factors' needs TT modes whose leading ones multiply to in_features={in_features}; "
                f"{list(shape)} for {in_features}x{out_features} do not: use 'auto' or 'matrix', or such a shape"
            )
        self.forward_mode = forward
        self.dense_dtype = dense_dtype or dtype
        ranks = [1] + [rank] * (len(shape) - 1) + [1]
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(ranks[i], k, ranks[i + 1], dtype=dtype, device=device))
            for i, k in enumerate(shape)
        )
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        self.initial_cores = FrozenCores(self.cores) if init == "noise_reduction" else None
        self.subtract_initial = subtract_initial
        # (form, operands, cast, key): this layer's matrix or factors, rebuilt together with others (tt_batch.py)
        self._held = None
        self._checked_in = None  # the checked pass (above) that found _held current
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "gaussian") -> None:
        if self.cores[0].device.type == "meta":
            return
        initialise_cores(self.cores, self.in_features, self.out_features, init, self.initial_cores)
        if self.bias is not None:
            self.bias.zero_()

    def raw_matrix(self) -> torch.Tensor:
        """TT(cores) as an (in x out) matrix, in the cores' dtype."""
        return tt_to_matrix(list(self.cores), self.in_features, self.out_features, self.split)

    def initial_matrix(self) -> torch.Tensor:
        """TT(initial cores) (noise_reduction only), cached."""
        return self.initial_cores.matrix(self.in_features, self.out_features, self.split)

    def negated_initial_matrix(self) -> torch.Tensor:
        """-TT(initial cores) (noise_reduction only), cached."""
        return self.initial_cores.negated_matrix(self.in_features, self.out_features, self.split)

    def subtracts_initial(self) -> bool:
        return self._modules.get("initial_cores") is not None and self.subtract_initial

    def first_core(self) -> torch.Tensor:
        """cores[0]. The hot paths (every forward, every token of generate) read it from the module's dicts:
        ParameterList indexing and nn.Module.__getattr__ cost several Python calls each."""
        return self._modules["cores"]._parameters["0"]

    def multiplies_by_factors(self, device: torch.device) -> bool:
        """Whether forward() on `device` multiplies by the factors (x @ L @ R) or by the rebuilt W."""
        if self.split is None or self.forward_mode == "matrix":
            return False
        if self.forward_mode == "factors":
            return True
        width = self.rank * (2 if self.subtracts_initial() else 1)
        fewer = width * (self.in_features + self.out_features) < self.in_features * self.out_features
        return fewer and device.type == "cpu"

    def batch_key(self) -> tuple:
        """Layers with equal keys rebuild their matrices (or factors) with the same stacked products."""
        core = self.first_core()
        return (self.shape, self.rank, self.in_features, self.out_features, self.subtracts_initial(),
                self.multiplies_by_factors(core.device), core.dtype, core.device)

    def _state_key(self) -> tuple:
        # in-place updates (optimizer steps, load_state_dict) bump _version; .to() changes data_ptr; a change
        # through .data neither (the epoch above sees it at the next model forward).
        # Checked for every TT layer at every forward (each token of generate): the dicts are read
        # directly, ParameterList's indexing costs more than the check itself.
        # (nn.Module.__getattr__ is avoided too: the submodules and bias are read from their dicts)
        tensors = [*self._modules["cores"]._parameters.values()]
        initial = self._modules.get("initial_cores")
        if initial is not None:
            tensors += initial._buffers.values()
        bias = self._parameters.get("bias")
        if bias is not None:
            tensors.append(bias)
        return (_weights_epoch, *[(t.data_ptr(), t._version) for t in tensors])

    def hold(self, form: str, operands, cast: tuple | None = None) -> None:
        """Use `operands` as this layer's weight_matrix() (form "matrix") or factors() (form
        "factors", a (Lt, R) pair) for as long as the cores stay as they are; `cast` = (dtype,
        operands, bias) already cast to the activations' dtype, for forward()."""
        self._held = (form, operands, cast, self._state_key())
        self.mark_checked()

    def held_is_current(self) -> bool:
        """Whether what this layer holds was built from its cores as they are now (tt_batch's plan)."""
        held = self._held
        return held is not None and held[3] == self._state_key()

    def mark_checked(self) -> None:
        """What this layer holds was checked (or built) in the forward now running: it need not check again."""
        self._checked_in = current_checked_pass()

    def _valid_held(self, form: str):
        if self._held is None or torch.compiler.is_compiling():
            return None
        held_form, operands, cast, key = self._held
        if not checked_in_this_pass(self._checked_in):
            first = operands if held_form == "matrix" else operands[0]
            if held_is_stale(key, self._state_key(), first, self.first_core().requires_grad):
                self._held = None
                return None
        return (operands, cast) if held_form == form else None

    def holds_current(self, form: str, dtype: torch.dtype | None) -> bool:
        """Whether this layer holds its `form` ("matrix" or "factors") for the cores as they are, cast to
        `dtype` where that differs from the cores' (None: uncast), and usable now: built with a graph
        that is still to be used would be reused by a second backward pass, so this is only for
        forwards that want no graph (evaluation, generation)."""
        if graph_wanted(self.first_core().requires_grad):
            return False
        held = self._valid_held(form)
        if held is None:
            return False
        operands, cast = held
        first = operands if form == "matrix" else operands[0]
        current = dtype is None or first.dtype == dtype or (cast is not None and cast[0] == dtype)
        if current:
            self.mark_checked()
        return current

    def _held_matrix(self) -> torch.Tensor | None:
        held = self._valid_held("matrix")
        return None if held is None else held[0]

    def _operands_and_bias(self, form: str, dtype: torch.dtype):
        """The held (or freshly built) matrix or factors, and the bias, in `dtype`."""
        held = self._valid_held(form)
        if held is None:
            operands, cast = (self._built_factors() if form == "factors" else self._built_matrix()), None
        else:
            operands, cast = held
        if cast is not None and cast[0] == dtype:
            return cast[1], cast[2]
        bias = self._parameters.get("bias")
        if (operands[0] if form == "factors" else operands).dtype == dtype:
            return operands, bias  # the cores' dtype (fp32 activations): nothing to cast
        operands = tuple(t.to(dtype) for t in operands) if form == "factors" else operands.to(dtype)
        return operands, None if bias is None else bias.to(dtype)

    def __getstate__(self):
        # copies (deepcopy, pickle) rebuild their own matrix: a held one may carry an autograd graph
        state = dict(super().__getstate__())
        state["_held"] = None
        state["_checked_in"] = None
        return state

    def weight_matrix(self) -> torch.Tensor:
        """The effective dense (in x out) matrix, in the cores' dtype."""
        held = self._held_matrix()
        return held if held is not None else self._built_matrix()

    def _built_matrix(self) -> torch.Tensor:
        if not self.subtracts_initial():
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

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Lt (k x in), R (k x out)) with W = Lt^T @ R: k = rank, or 2 * rank when the initial
        product is subtracted (difference_factors). Needs modes split at the in/out boundary."""
        held = self._valid_held("factors")
        return held[0] if held is not None else self._built_factors()

    def _built_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        left, right = tt_factors(list(self.cores), self.split)
        if not self.subtracts_initial():
            return difference_factors(left, right)
        return difference_factors(left, right, *self.initial_cores.factors(self.split))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multiplies_by_factors(x.device):
            (left_t, right), bias = self._operands_and_bias("factors", x.dtype)
            return F.linear(F.linear(x, left_t), right.t(), bias)
        weight, bias = self._operands_and_bias("matrix", x.dtype)
        return F.linear(x, weight.t(), bias)

    def to_dense_linear(self) -> nn.Linear:
        """An nn.Linear computing the same map (used when unloading a tensorized head)."""
        with torch.no_grad():
            weight = self.weight_matrix()
            linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
            linear.to(device=weight.device, dtype=self.dense_dtype)
            linear.weight.copy_(weight.t())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, shape={list(self.shape)}, rank={self.rank}"
