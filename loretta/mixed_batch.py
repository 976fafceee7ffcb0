"""Mixed-adapter batches at inference, as PEFT's LoRA offers them:
`model(**batch, adapter_names=["a", "b", "__base__", ...])` runs each sample with its own adapter
("__base__": the base model alone), also through `generate` (beam search included).

PeftModel pops `adapter_names` and enters the tuner's `_enable_peft_forward_hooks`; the context
manager here validates the names once and, for the duration of the call, hands them to every
LoRETTA layer and every `modules_to_save` wrapper (layer norms, the classification head) through
forward pre-hooks.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

BASE = "__base__"


def sub_batches(x: torch.Tensor, adapter_names, where: str) -> list[tuple[str, torch.Tensor]]:
    """(adapter name, the rows of x it owns), in order of first appearance.

    x is batch-first, or (batch * tokens, ...) as OPT's feed-forward flattens it: then sample i owns
    the contiguous block of rows i * tokens ... (i + 1) * tokens - 1.
    """
    samples = len(adapter_names)
    if samples == 0 or len(x) % samples:
        # the model's batch was checked on entry (_check_batch): a layer that sees another count also
        # acts on something shared by the whole batch, e.g. DeBERTa-v2's query_proj / key_proj, which
        # also project the relative-position table (PEFT's LoRA refuses that case too)
        raise ValueError(
            f"adapter_names has {samples} entries but {where} received a batch of {len(x)}: this layer also "
            "acts on a tensor shared by all samples (as DeBERTa-v2's query_proj projects the relative-position "
            "table), which one mixed batch cannot give each adapter; run each adapter's samples in their own batch"
        )
    rows_per_sample = len(x) // samples
    order: dict[str, list[int]] = {}
    for index, name in enumerate(adapter_names):
        order.setdefault(name, []).append(index)
    groups = []
    for name, indices in order.items():
        first_rows = torch.tensor(indices, device=x.device) * rows_per_sample
        rows = (first_rows[:, None] + torch.arange(rows_per_sample, device=x.device)).flatten()
        groups.append((name, rows))
    return groups


def _inject(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


def _per_sample_wrapper_forward(wrapper: ModulesToSaveWrapper, *args, adapter_names, **kwargs):
    """PEFT's own mixed forward for `modules_to_save` refuses anything but Linear / Embedding / Conv.
    The modules LoRETTA trains there (layer norms, the pooler or classification head) act on each
    sample alone, so running each sub-batch through its adapter's copy is exact."""
    if not args:
        raise TypeError(
            f"mixed adapter batches need the input of {type(wrapper.original_module).__name__} passed positionally"
        )
    x, *rest = args
    if isinstance(x, nn.Parameter):
        # e.g. DeBERTa-v2's norm of the relative-position table: one result serves every sample
        raise ValueError(
            f"mixed adapter batches: the trained {type(wrapper.original_module).__name__} is applied to a "
            f"parameter of shape {tuple(x.shape)} shared by all samples, not to each sample's activations, so "
            "its per-adapter copies cannot serve one batch; run each adapter's samples in their own batch, "
            "or leave that module out of modules_to_save"
        )
    out = None
    for name, index in sub_batches(x, adapter_names, type(wrapper.original_module).__name__):
        module = wrapper.modules_to_save[name] if name in wrapper.modules_to_save else wrapper.original_module
        # other inputs laid out as x is (a gated norm's gate) are split with it
        rows = [r[index] if isinstance(r, torch.Tensor) and r.shape[:1] == x.shape[:1] else r for r in rest]
        part = module(x[index], *rows, **kwargs)
        if not isinstance(part, torch.Tensor):
            raise TypeError(
                f"mixed adapter batches need modules_to_save that return one tensor; "
                f"{type(wrapper.original_module).__name__} returned {type(part).__name__}"
            )
        if out is None:
            out = part.new_empty((len(x), *part.shape[1:]))
        out[index] = part
    return out


def _checked_in_forward(*args, **kwargs) -> None:
    """PEFT's check wants batch-first inputs; _per_sample_wrapper_forward checks (and allows OPT's flattening)."""


def _check_batch(model, args, kwargs, adapter_names, repeats):
    inputs = [kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *args[:1]]
    batch = next((x for x in inputs if isinstance(x, torch.Tensor)), None)
    if batch is not None and len(batch) != len(adapter_names):
        raise ValueError(
            f"adapter_names has {len(adapter_names) // repeats} entries but the batch has {len(batch) // repeats} "
            "samples: give one adapter name per sample"
        )


@contextmanager
def adapter_names_hooks(tuner: nn.Module, layer_cls: type, adapter_names, num_beams=None):
    if tuner.training:
        raise ValueError("adapter_names (mixed adapter batches) is for inference: call model.eval() first")
    if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
        raise TypeError(f"adapter_names must be a list of adapter names, one per sample; got {adapter_names!r}")
    known = sorted(tuner.peft_config)
    unknown = sorted({n for n in adapter_names if n != BASE} - set(known))
    if unknown:
        raise ValueError(f"adapter_names names unknown adapters {unknown}; valid: {known + [BASE]}")

    per_sample, repeats = list(adapter_names), 1
    if isinstance(num_beams, int) and num_beams > 1:
        # generate() repeats each sample num_beams times; an encoder still sees the original batch
        per_sample, repeats = [name for name in adapter_names for _ in range(num_beams)], num_beams

    handles, overridden = [], []

    def hook_into(modules, names):
        for module in modules:
            if isinstance(module, (layer_cls, ModulesToSaveWrapper)):
                inject = partial(_inject, adapter_names=names)
                handles.append(module.register_forward_pre_hook(inject, with_kwargs=True))
            if isinstance(module, ModulesToSaveWrapper) and module not in overridden:
                module._mixed_batch_forward = partial(_per_sample_wrapper_forward, module)
                module._check_forward_args = _checked_in_forward
                overridden.append(module)

    # checked where the whole batch is seen, so the error does not name whichever layer comes first
    check = partial(_check_batch, adapter_names=per_sample, repeats=repeats)
    handles.append(tuner.model.register_forward_pre_hook(check, with_kwargs=True))
    hook_into(tuner.modules(), per_sample)
    encoder = tuner.model.get_encoder() if hasattr(tuner.model, "get_encoder") else None
    if per_sample != list(adapter_names) and encoder is not None and encoder is not tuner.model:
        hook_into(encoder.modules(), list(adapter_names))  # runs after the first hook, so it wins
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in overridden:
            del module._mixed_batch_forward
            del module._check_forward_args
