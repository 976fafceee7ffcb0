"""Prefix tuning for encoders (PEFT's prefix tuning fails on every *ForSequenceClassification in
transformers 5: it still passes `past_key_values`).

Every self-attention layer gets `num_virtual_tokens` trainable keys and values, placed before the
sequence's own; every token can attend to them, they attend to nothing. Implemented as an
attention function registered with transformers' AttentionInterface ("loretta_prefix"): it
prepends the layer's prefix to key and value, widens the mask, then runs PyTorch SDPA. So it works
for the models whose attention goes through that interface (BERT, RoBERTa families) and leaves
the rest of the model untouched: positions, token types and the mask the model builds are as before.
"""

from __future__ import annotations

import torch
from torch import nn

from .checks import ConfigError

ATTN_NAME = "loretta_prefix"
# Model types whose self-attention calls transformers' attention interface; DeBERTa (v1) and MPNet
# compute attention themselves (relative positions), so a prefix would need their own code.
SUPPORTED = {"bert": "BertSelfAttention", "roberta": "RobertaSelfAttention",
             "xlm-roberta": "XLMRobertaSelfAttention", "electra": "ElectraSelfAttention"}


class EncoderPrefix(nn.Module):
    """Keys and values of shape (layers, heads, tokens, head_dim)."""

    def __init__(self, layers: int, heads: int, head_dim: int, tokens: int, init_std: float):
        super().__init__()
        self.keys = nn.Parameter(torch.randn(layers, heads, tokens, head_dim) * init_std)
        self.values = nn.Parameter(torch.randn(layers, heads, tokens, head_dim) * init_std)


def _prefix_attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix, layer = module.__dict__.get("_loretta_prefix", (None, None))
    if prefix is not None:
        batch = key.shape[0]
        pk = prefix.keys[layer].to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        pv = prefix.values[layer].to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        key, value = torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2)
        if attention_mask is not None:  # everyone attends to the prefix: True (bool) or 0 (additive)
            fill = True if attention_mask.dtype == torch.bool else 0.0
            pad = attention_mask.new_full((*attention_mask.shape[:-1], pk.shape[2]), fill)
            attention_mask = torch.cat([pad, attention_mask], dim=-1)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(ATTN_NAME, _prefix_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def add_encoder_prefix(model: nn.Module, num_virtual_tokens: int, init_std: float) -> EncoderPrefix:
    """Attach a trainable prefix to every self-attention layer of `model` (frozen elsewhere by the caller)."""
    model_type = model.config.model_type
    if model_type not in SUPPORTED:
        raise ConfigError(f"method=prefix is not available for encoder model_type {model_type!r}; encoders "
                          f"with prefix support: {', '.join(SUPPORTED)} (decoders use PEFT's prefix tuning)")
    attentions = [m for m in model.modules() if type(m).__name__ == SUPPORTED[model_type]]
    first = attentions[0]
    prefix = EncoderPrefix(len(attentions), first.num_attention_heads, first.attention_head_size,
                           num_virtual_tokens, init_std)
    for layer, attention in enumerate(attentions):
        attention.__dict__["_loretta_prefix"] = (prefix, layer)  # a plain attribute: not a submodule
    model.add_module("loretta_prefix", prefix)
    _register()
    model.set_attn_implementation(ATTN_NAME)
    return prefix
