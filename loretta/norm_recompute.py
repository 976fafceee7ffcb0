"""Trainable layer norms that keep only their input for the backward pass.

A norm whose weight trains must give autograd its normalised input for the weight's gradient, on
top of what the normalisation itself saves: measured with `scripts/activation_memory.py`, this is
the whole of LoRETTA's activation memory over PEFT LoRA (DeBERTa's `DebertaLayerNorm`, LLaMA's
`RMSNorm`, ...), which leaves the norms frozen. Here such a norm runs its forward without building
a graph, keeps only its input, and recomputes the forward inside the backward pass: a norm is a
few elementwise passes, far cheaper than the matrix products around it, and it has no randomness,
so the recomputed output is the same. Works for any family's norm class, since it reuses the class's
own forward; the patch is an instance attribute, so state dicts and module names do not change.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .parameter_slots import parameters_replaced


class _RecomputedForward(torch.autograd.Function):
    """The norm's forward without a graph; in the backward, the forward again with the same input and
    the same parameter tensors (those in its slots at the forward: the parameters, or what a caller
    put there, such as master_weights' casts), and their gradients."""

    @staticmethod
    def forward(ctx, module: nn.Module, names: tuple[str, ...], x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.module, ctx.names = module, names
        device_type = x.device.type
        # devices without autocast (the meta device of shape and FLOP dry runs) recompute without it
        ctx.autocast = ((device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
                        if torch.amp.is_autocast_available(device_type) else None)
        ctx.save_for_backward(x, *params)
        with torch.no_grad():
            return type(module).forward(module, x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, *params = ctx.saved_tensors
        needs_grad = ctx.needs_input_grad[2:]
        x, *params = (t.detach().requires_grad_(needed) for t, needed in zip([x, *params], needs_grad))
        # the forward ran under the caller's autocast state; the recomputation must too
        if ctx.autocast is None:
            autocast = contextlib.nullcontext()
        else:
            device_type, autocast_enabled, autocast_dtype = ctx.autocast
            autocast = torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_enabled)
        with torch.enable_grad(), autocast, parameters_replaced(ctx.module, dict(zip(ctx.names, params))):
            output = type(ctx.module).forward(ctx.module, x)
        inputs = [t for t, needed in zip([x, *params], needs_grad) if needed]
        grads = iter(torch.autograd.grad(output, inputs, grad_output, allow_unused=True))
        return (None, None, *(next(grads) if needed else None for needed in needs_grad))


class RecomputingNormForward:
    """Stands in for one norm module's `forward` (set as an instance attribute). A plain callable
    object rather than a bound method, so that deep copies (PEFT copies each norm it trains) rebind
    it to the copy and pickling works."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, *args, **kwargs):
        module = self.module
        if not torch.is_grad_enabled():  # first: inference (each token of generate) skips the rest
            return type(module).forward(module, *args, **kwargs)
        named = list(module.named_parameters())
        x = args[0] if len(args) == 1 and not kwargs else None
        if (not any(p.requires_grad for _, p in named)
                or not isinstance(x, torch.Tensor) or torch.compiler.is_compiling()):
            # frozen (e.g. the original module PEFT keeps for disable_adapter), inference, a
            # signature other than forward(x): the class's own forward, unchanged. Also under
            # torch.compile, which cannot trace the autograd.grad of the backward (a graph break at
            # every norm) and whose partitioner already recomputes cheap elementwise ops like norms
            # in the backward rather than saving them
            return type(module).forward(module, *args, **kwargs)
        names, params = zip(*named)
        return _RecomputedForward.apply(module, names, x, *params)


# Norms whose forward is one fused kernel that keeps its input and per-row statistics whether or not
# the weight trains (measured: the same bytes saved frozen and trained, where RMSNorm's composite
# doubles them): recomputing them would add a kernel per norm and save nothing.
_FUSED_NORM_FORWARDS = (nn.LayerNorm.forward, nn.GroupNorm.forward)


def saves_memory_when_recomputed(module: nn.Module) -> bool:
    """Whether a trained `module` (a norm) keeps more for backward than its input: the Python norms of
    DeBERTa, LLaMA and the other RMSNorm families do; nn.LayerNorm (BERT, RoBERTa, MPNet, OPT,
    GPT-2, ...) does not."""
    return type(module).forward not in _FUSED_NORM_FORWARDS


def recompute_in_backward(module: nn.Module) -> None:
    """Make `module` (a norm) keep only its input for backward; idempotent."""
    if not isinstance(module.__dict__.get("forward"), RecomputingNormForward):
        module.forward = RecomputingNormForward(module)


def restore_forward(model: nn.Module) -> None:
    """Undo recompute_in_backward on every module of `model` (unload returns a stock model)."""
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), RecomputingNormForward):
            del module.forward
