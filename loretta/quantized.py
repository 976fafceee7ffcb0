"""Adding an update to a base layer's weight in the weight's own storage: plain, or quantized by
bitsandbytes (4-bit / 8-bit bases, QLoRA style).

Training and inference on a quantized base need nothing special (the base layer's forward
dequantizes; the TT cores stay fp32). Merging does: a quantized weight is dequantized, the update
added, and the sum quantized again, as PEFT's LoRA does it. That last rounding makes a merged
quantized model differ slightly from the unmerged one.
"""

from __future__ import annotations

import warnings

import torch
from peft.utils.integrations import dequantize_bnb_weight, get_bnb_param_type
from torch import nn


def add_to_weight(base_layer: nn.Module, delta: torch.Tensor, *, safe_merge: bool, adapter_name: str) -> None:
    """base_layer.weight += delta (delta in the weight's layout, any float dtype)."""
    weight = base_layer.weight
    kind = get_bnb_param_type(weight)
    if kind == "4bit":
        dense = dequantize_bnb_weight(weight, state=weight.quant_state)
    elif kind == "8bit":
        if base_layer.state.SCB is None:
            base_layer.state.SCB = weight.SCB
        dense = dequantize_bnb_weight(weight, state=base_layer.state)
    else:
        dense = weight.data
    merged = dense + delta.to(device=dense.device, dtype=dense.dtype)
    if safe_merge and not torch.isfinite(merged).all():
        raise ValueError(f"NaNs or infs found while merging adapter {adapter_name!r}; the adapter seems broken")
    if not kind:
        weight.data = merged
        return

    import bitsandbytes as bnb

    warnings.warn(
        f"merging into a {kind} quantized layer quantizes the merged weight again: outputs differ slightly "
        "from the unmerged model's", stacklevel=3,
    )
    if kind == "4bit":
        kwargs = {k: v for k, v in weight.__dict__.items() if not k.startswith("_") and k != "data"}
        kwargs.update(requires_grad=False, bnb_quantized=False)  # quantized again on .to(device)
        base_layer.weight = bnb.nn.Params4bit(merged.to("cpu"), **kwargs).to(weight.device)
    else:
        base_layer.weight = bnb.nn.Int8Params(
            merged.to("cpu"), requires_grad=False, has_fp16_weights=weight.has_fp16_weights
        ).to(weight.device)
        base_layer.state.reset_grads()
