"""What LoRETTA trains of a half-precision model itself keeps float32 master weights.

A bf16 LLaMA's RMSNorm weights are close to 1.0, where consecutive bf16 numbers are 2^-7 apart:
AdamW's steps at fine-tuning learning rates (~1e-3 and below) round away, and trained in bf16 the
norms never change (measured: not one of a tiny LLaMA's norms moved in five steps at lr 1e-3).
PEFT upcasts its own adapter weights for this reason (`autocast_adapter_dtype`, on by default), but
not the modules it trains whole (LoRETTA's layer norms and classification head) nor, with
bias="all", the model's biases. Here each such module keeps those parameters in float32 and runs its
forward with them cast to the dtype they had, so the forward computes what it did (same dtype, same
values) and the optimizer updates the float32 numbers, as mixed-precision training does for any
weight.

The cast is set up for the forward as an instance attribute (as norm_recompute does), so state
dicts and module names do not change. It wraps whatever forward the module had: a recomputed norm
(norm_recompute) then saves and recomputes with the cast weights, so each is cast once a step.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .parameter_slots import parameters_replaced

HALF_DTYPES = (torch.float16, torch.bfloat16)

# on a module that keeps masters: (the dtype its forward computes in, the names of its own parameters
# held in float32 for it)
_MASTERS = "_loretta_masters"


def compute_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype `module`'s forward computes in if it keeps float32 masters, else None."""
    entry = module.__dict__.get(_MASTERS)
    return entry[0] if entry else None


@contextmanager
def _parameters_in_compute_dtype(module: nn.Module):
    """For the duration, `module`'s master parameters are cast to its compute dtype in their slots; the
    casts are in the graph, so gradients reach the masters."""
    entry = module.__dict__.get(_MASTERS)
    if entry is None:
        yield
        return
    dtype, names = entry
    with parameters_replaced(module, {name: module._parameters[name].to(dtype) for name in names}):
        yield


class CastingForward:
    """Stands in for one module's `forward` (an instance attribute): the forward it had (the class's, or
    an instance forward set before: a recomputed norm, a device hook), inside the cast. A plain
    callable object, so that deep copies rebind it to the copy."""

    def __init__(self, module: nn.Module, inner=None):
        self.module = module
        self.inner = inner

    def __call__(self, *args, **kwargs):
        with _parameters_in_compute_dtype(self.module):
            if self.inner is None:
                return type(self.module).forward(self.module, *args, **kwargs)
            return self.inner(*args, **kwargs)


def keep_float32_masters(module: nn.Module, names: list[str] | None = None) -> bool:
    """Make `module` keep its own float16 / bfloat16 parameters `names` (default: all of them) in float32
    and compute with them in the dtype they had; returns whether it changed anything. Idempotent."""
    if compute_dtype(module) is not None:
        return False
    candidates = module._parameters if names is None else {n: module._parameters.get(n) for n in names}
    half = {n: p for n, p in candidates.items() if p is not None and p.dtype in HALF_DTYPES}
    dtypes = {p.dtype for p in half.values()}
    if len(dtypes) != 1:
        # nothing in half precision, or two of them: the model's own arrangement, left alone
        return False
    for param in half.values():
        param.data = param.data.float()
    module.__dict__[_MASTERS] = (dtypes.pop(), frozenset(half))
    module.forward = CastingForward(module, inner=module.__dict__.get("forward"))
    return True


def restore_dtypes(model: nn.Module) -> None:
    """Undo keep_float32_masters on every module of `model`: parameters back in their compute dtype, the
    forward they had (unload returns a stock model)."""
    for module in model.modules():
        entry = module.__dict__.pop(_MASTERS, None)
        if entry is None:
            continue
        dtype, names = entry
        for name in names:
            module._parameters[name].data = module._parameters[name].data.to(dtype)
        current = module.__dict__.get("forward")
        if isinstance(current, CastingForward):
            if current.inner is None:
                del module.forward
            else:
                module.forward = current.inner
