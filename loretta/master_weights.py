"""Modules trained whole in a half-precision model keep float32 master weights.

A bf16 LLaMA's RMSNorm weights are close to 1.0, where consecutive bf16 numbers are 2^-7 apart:
AdamW's steps at fine-tuning learning rates (~1e-3 and below) round away, and trained in bf16 the
norms never change (measured: not one of a tiny LLaMA's norms moved in five steps at lr 1e-3).
PEFT upcasts its own adapter weights for this reason (`autocast_adapter_dtype`, on by default), but
not the modules it trains whole: LoRETTA's layer norms and classification head. Here each such
module keeps its own parameters in float32 and runs its forward with them cast to the dtype they
had, so the forward computes what it did (same dtype, same values) and the optimizer updates the
float32 numbers, as mixed-precision training does for any weight.

The cast is set up for the forward as an instance attribute (as norm_recompute does), so state
dicts and module names do not change; `run_forward` is the class's forward with the cast, which the
norm recomputation also calls, so that its recomputed forward differentiates the float32 masters.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

HALF_DTYPES = (torch.float16, torch.bfloat16)

# the dtype a module's parameters had before they became float32 masters (the one its forward computes in)
_COMPUTE_DTYPE = "_loretta_compute_dtype"


def compute_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype `module`'s forward computes in if it keeps float32 masters, else None."""
    return module.__dict__.get(_COMPUTE_DTYPE)


@contextmanager
def _parameters_in_compute_dtype(module: nn.Module):
    """For the duration, `module`'s own parameter slots hold its float32 masters cast to its compute
    dtype (as torch.func.functional_call fills them); the casts are in the graph, so gradients reach
    the masters."""
    dtype = compute_dtype(module)
    if dtype is None:
        yield
        return
    masters = dict(module._parameters)
    try:
        for name, param in masters.items():
            if param is not None:
                module._parameters[name] = param.to(dtype)
        yield
    finally:
        module._parameters.update(masters)


def run_forward(module: nn.Module, *args, **kwargs):
    """The class's forward of `module`, computing in its compute dtype if it keeps float32 masters."""
    with _parameters_in_compute_dtype(module):
        return type(module).forward(module, *args, **kwargs)


class CastingForward:
    """Stands in for one module's `forward` (an instance attribute): the forward it had (the class's,
    or an instance forward set before, such as a device hook), inside the cast. A plain callable
    object, so that deep copies rebind it to the copy."""

    def __init__(self, module: nn.Module, inner=None):
        self.module = module
        self.inner = inner

    def __call__(self, *args, **kwargs):
        if self.inner is None:
            return run_forward(self.module, *args, **kwargs)
        with _parameters_in_compute_dtype(self.module):
            return self.inner(*args, **kwargs)


def keep_float32_masters(module: nn.Module) -> bool:
    """Make each submodule of `module` whose own parameters are float16 / bfloat16 keep them in float32
    and compute in the dtype they had; returns whether any did. Idempotent."""
    changed = False
    for sub in module.modules():
        own = [p for p in sub._parameters.values() if p is not None]
        half = {p.dtype for p in own if p.dtype in HALF_DTYPES}
        if not half or compute_dtype(sub) is not None:
            continue
        if len(half) > 1 or any(p.dtype not in HALF_DTYPES for p in own):
            # one compute dtype per module: mixed parameters are the model's own arrangement, left alone
            continue
        for param in own:
            param.data = param.data.float()
        sub.__dict__[_COMPUTE_DTYPE] = half.pop()
        current = sub.__dict__.get("forward")
        if not getattr(current, "casts_master_weights", False):  # the norm recomputation casts itself
            sub.forward = CastingForward(sub, inner=current)
        changed = True
    return changed


def restore_dtypes(model: nn.Module) -> None:
    """Undo keep_float32_masters on every module of `model`: parameters back in their compute dtype, the
    class's forward (unload returns a stock model)."""
    for module in model.modules():
        dtype = compute_dtype(module)
        if dtype is None:
            continue
        for param in module._parameters.values():
            if param is not None:
                param.data = param.data.to(dtype)
        del module.__dict__[_COMPUTE_DTYPE]
        current = module.__dict__.get("forward")
        if isinstance(current, CastingForward):
            if current.inner is None:
                del module.forward
            else:
                module.forward = current.inner
