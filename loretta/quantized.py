"""Adding an update to a base layer's weight in the weight's own storage: plain, or quantized by
bitsandbytes (4-bit / 8-bit bases, QLoRA style).

Training and inference on a quantized base need little (the base layer's forward dequantizes; the
TT cores stay fp32): only bitsandbytes' CPU inference layout must be kept out of a model that
trains (keep_4bit_training_layout). Merging needs more: a quantized weight is dequantized, the update
added, and the sum quantized again, as PEFT's LoRA does it. That last rounding makes a merged
quantized model differ slightly from the unmerged one.
"""

from __future__ import annotations

import sys
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


def keep_4bit_training_layout(model: nn.Module) -> None:
    """Keep every bitsandbytes 4-bit layer of `model` in the layout its training path uses.

    On a CPU with AVX512-BF16, a Linear4bit repacks its weight into an inference layout at its first
    forward in eval mode without gradients, and the training path cannot use that layout: the next
    training step fails ("a view of a leaf Variable that requires grad is being used in an in-place
    operation", bitsandbytes 0.50). A model that trains, evaluates and trains again (any training
    loop with evaluations) would break on such machines only. So the repacking is switched off
    (evaluation dequantizes, as training does) and a layer already repacked is unpacked, as
    bitsandbytes itself does before saving or moving to a GPU.
    """
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:  # no quantized layer can exist
        return
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = module.weight
        if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
            weight.data, weight.quant_state = bnb.functional._convert_weight_packed_for_cpu_inverse(
                weight.data, weight.quant_state)
