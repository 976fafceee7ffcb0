"""Where LoRETTA goes in each model family (one table, keyed by transformers' `model_type`).

Target names use PEFT's matching: a name matches a module whose full name equals it or ends with
"." + name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class FamilyPreset:
    adp_output_side: tuple[str, ...]  # adapter on the module's output (Houlsby placement)
    adp_input_side: tuple[str, ...]  # adapter on the module's input
    rep_targets: tuple[str, ...]  # LoRETTA_rep (LoRA) targets: the attention query and value
    # hidden x hidden layer of the classification head, tensorized for SEQ_CLS: a layer inside a head module
    # (BERT's pooler.dense), or a top-level layer of its own (DistilBERT's pre_classifier)
    head_dense: str | None = None
    # norms that stay frozen when the layer norms train: those that do not act on the activations
    frozen_norms: tuple[str, ...] = ()
    # multimodal models: adapters and trainable norms only inside this module (the language model); the
    # vision tower's layers share the decoder's names (q_proj, v_proj) and stay as they are
    within: str | None = None

    def present_in(self, layer_names) -> FamilyPreset:
        """The preset less the target names that match none of `layer_names` (the model's linear layers): a
        family's variants may name a layer differently (T5 v1.0 has one `wi`, v1.1 a gated `wi_0` and `wi_1`)."""
        def present(names):
            return tuple(n for n in names if any(name_matches(layer, [n]) for layer in layer_names))
        return replace(self, adp_output_side=present(self.adp_output_side),
                       adp_input_side=present(self.adp_input_side), rep_targets=present(self.rep_targets))


_BERT_LIKE = FamilyPreset(("output.dense",), (), ("query", "value"), "pooler.dense")
_ROBERTA_LIKE = FamilyPreset(("output.dense",), (), ("query", "value"), "classifier.dense")
_LLAMA_LIKE = FamilyPreset(("down_proj",), ("gate_proj", "up_proj"), ("q_proj", "v_proj"))
_GLM_LIKE = FamilyPreset(("down_proj",), ("gate_up_proj",), ("q_proj", "v_proj"))  # gate and up fused
_OPT_LIKE = FamilyPreset(("fc2",), ("fc1",), ("q_proj", "v_proj"))
_GPT2_LIKE = FamilyPreset(("mlp.c_proj",), ("mlp.c_fc",), ("c_attn",))  # c_attn fuses q,k,v
_GPT_NEOX_LIKE = FamilyPreset(("dense_4h_to_h",), ("dense_h_to_4h",), ("query_key_value",))  # fused q,k,v
# mixture-of-experts decoders: transformers 5 holds the experts as fused 3-D parameters, not linear layers, so
# LoRETTA_adp sits on the output of the whole feed-forward block (the sparse block: routed and shared experts; in
# the dense first layers some families have, their MLP, which has the same name), as on a dense decoder's
# down_proj; rep as for LLaMA
_MOE = FamilyPreset(("mlp",), (), ("q_proj", "v_proj"))
# multi-head latent attention (DeepSeek-V2/V3): queries through a low-rank q_a_proj -> q_b_proj (or one q_proj),
# keys and values up-projected together from a shared latent by kv_b_proj; rep on those two, the query and value
_MLA_MOE = FamilyPreset(("mlp",), (), ("q_proj", "q_b_proj", "kv_b_proj"))
# hybrids (Qwen3.5, Qwen3-Next): three Gated DeltaNet (linear attention) layers to each full-attention one; rep
# on each kind's query and value (the linear attention fuses q, k, v in in_proj_qkv, Qwen3-Next also its gate z
# in in_proj_qkvz), so that every layer is adapted
_QWEN3_5 = FamilyPreset(("down_proj",), ("gate_proj", "up_proj"), ("q_proj", "v_proj", "in_proj_qkv"))
_QWEN3_5_MOE = replace(_MOE, rep_targets=_QWEN3_5.rep_targets)
# vision-language models: the text decoder (`model.language_model`) as LLaMA, the vision tower untouched
_VLM_LLAMA_LIKE = replace(_LLAMA_LIKE, within="language_model")
_VLM_MOE = replace(_MOE, within="language_model")
_IDEFICS_LIKE = replace(_LLAMA_LIKE, within="text_model")  # Idefics3 / SmolVLM name theirs `model.text_model`
# encoder-decoders: the feed-forward blocks of both stacks (as for the decoders above); rep on the query
# and value of self- and cross-attention (PEFT LoRA's defaults for these families)
_T5_LIKE = FamilyPreset(("DenseReluDense.wo",), ("DenseReluDense.wi", "DenseReluDense.wi_0", "DenseReluDense.wi_1"),
                        ("q", "v"), "classification_head.dense")
_BART_LIKE = FamilyPreset(("fc2",), ("fc1",), ("q_proj", "v_proj"), "classification_head.dense")

FAMILY_PRESETS: dict[str, FamilyPreset] = {
    "bert": _BERT_LIKE,
    "roberta": _ROBERTA_LIKE,
    "xlm-roberta": _ROBERTA_LIKE,
    "deberta": FamilyPreset(("output.dense",), (), ("in_proj",), "pooler.dense"),  # v1 fuses q,k,v
    # v2/v3 normalise the relative-position table (encoder.LayerNorm, norm_rel_ebd="layer_norm"): a
    # parameter shared by every sample, not an activation; training it would also rule out
    # mixed-adapter batches, where each sample needs its own adapter's copy of every trained module
    "deberta-v2": FamilyPreset(("output.dense",), (), ("query_proj", "value_proj"), "pooler.dense",
                               frozen_norms=("encoder.LayerNorm",)),
    "distilbert": FamilyPreset(("attention.out_lin", "ffn.lin2"), (), ("q_lin", "v_lin"), "pre_classifier"),
    "electra": _ROBERTA_LIKE,
    "camembert": _ROBERTA_LIKE,
    "xlm-roberta-xl": _ROBERTA_LIKE,
    "roberta-prelayernorm": _ROBERTA_LIKE,
    "data2vec-text": _ROBERTA_LIKE,
    "longformer": _ROBERTA_LIKE,  # "query" / "value" are the local attention's, not query_global / value_global
    "ernie": _BERT_LIKE,
    "megatron-bert": _BERT_LIKE,
    # pre-norm, bias-free norms; q, k, v fused in Wqkv, the gated MLP's two input projections in Wi
    "modernbert": FamilyPreset(("attn.Wo", "mlp.Wo"), (), ("Wqkv",), "head.dense"),
    "mpnet": FamilyPreset(("attention.attn.o", "output.dense"), (), ("attn.q", "attn.v"), "classifier.dense"),
    "opt": _OPT_LIKE,
    "xglm": _OPT_LIKE,
    "biogpt": _OPT_LIKE,
    "gpt2": _GPT2_LIKE,  # Conv1D layers
    "gpt_neox": _GPT_NEOX_LIKE,  # Pythia
    "persimmon": _GPT_NEOX_LIKE,
    "gpt_bigcode": _GPT2_LIKE,  # StarCoder 1: GPT-2's names, as nn.Linear
    "codegen": FamilyPreset(("mlp.fc_out",), ("mlp.fc_in",), ("qkv_proj",)),  # fused q,k,v
    "mpt": FamilyPreset(("ffn.down_proj",), ("ffn.up_proj",), ("Wqkv",)),  # fused q,k,v
    "falcon": _GPT_NEOX_LIKE,
    "bloom": _GPT_NEOX_LIKE,
    "gptj": FamilyPreset(("mlp.fc_out",), ("mlp.fc_in",), ("q_proj", "v_proj")),
    "phi": FamilyPreset(("mlp.fc2",), ("mlp.fc1",), ("q_proj", "v_proj")),
    "phi3": FamilyPreset(("down_proj",), ("gate_up_proj",), ("qkv_proj",)),  # fuses q,k,v and gate,up
    "starcoder2": FamilyPreset(("mlp.c_proj",), ("mlp.c_fc",), ("q_proj", "v_proj")),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,  # q_norm / k_norm inside the attention (per head; OLMo-2: whole) train like the other norms
    "olmo2": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "cohere": _LLAMA_LIKE,
    "cohere2": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo3": _LLAMA_LIKE,
    "exaone4": _LLAMA_LIKE,
    "helium": _LLAMA_LIKE,
    "seed_oss": _LLAMA_LIKE,
    "ernie4_5": _LLAMA_LIKE,
    "arcee": _LLAMA_LIKE,  # no gate: up_proj -> activation -> down_proj
    "apertus": _LLAMA_LIKE,  # no gate, as Arcee
    "ministral": _LLAMA_LIKE,
    "ministral3": _LLAMA_LIKE,
    "internlm3": _LLAMA_LIKE,
    "exaone": _LLAMA_LIKE,
    "hunyuan_v1_dense": _LLAMA_LIKE,
    "granite_swa": _LLAMA_LIKE,
    "cwm": _LLAMA_LIKE,
    "nemotron": _LLAMA_LIKE,  # no gate, as Arcee
    "minicpm3": replace(_LLAMA_LIKE, rep_targets=("q_b_proj", "kv_b_proj")),  # latent attention (as DeepSeek's)
    "glm": _GLM_LIKE,
    "glm4": _GLM_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    # the per-layer input embeddings' projections stay frozen; layers that reuse an earlier layer's keys and
    # values have no v_proj, which `present_in` needs no help with (PEFT adapts the layers that exist)
    "gemma3n_text": _LLAMA_LIKE,  # its AltUp and LAuReL layers stay frozen
    "gemma4_text": _LLAMA_LIKE,
    "vaultgemma": _LLAMA_LIKE,
    "qwen3_5_text": _QWEN3_5,
    "mixtral": _MOE,
    "qwen2_moe": _MOE,  # its shared expert (linear layers) stays frozen, as the routed experts do
    "qwen3_moe": _MOE,
    "olmoe": _MOE,
    "granitemoe": replace(_MOE, adp_output_side=("block_sparse_moe",)),
    "phimoe": _MOE,
    "gpt_oss": _MOE,
    "glm4_moe": _MOE,  # GLM-4.5 and later
    "ernie4_5_moe": _MOE,
    "llama4_text": replace(_MOE, adp_output_side=("feed_forward",)),  # experts and a shared expert under it
    "hunyuan_v1_moe": _MOE,
    "minimax_m2": _MOE,
    # its shared MLP runs beside the sparse block, and its output is added after the block's (and its adapter's)
    "granitemoeshared": replace(_MOE, adp_output_side=("block_sparse_moe",)),
    "flex_olmo": _MOE,
    "afmoe": _MOE,  # its attention has a gate_proj of its own: no LLaMA names here
    "solar_open": _MOE,
    "cohere2_moe": _MOE,
    "deepseek_v2": _MLA_MOE,
    "deepseek_v3": _MLA_MOE,  # also Kimi K2
    "glm4_moe_lite": _MLA_MOE,
    "qwen3_5_moe_text": _QWEN3_5_MOE,
    "qwen3_next": replace(_QWEN3_5_MOE, rep_targets=("q_proj", "v_proj", "in_proj_qkvz")),
    "gemma3": _VLM_LLAMA_LIKE,  # Gemma 3 4B and larger (1B is gemma3_text)
    "llava": _VLM_LLAMA_LIKE,
    "mistral3": _VLM_LLAMA_LIKE,
    "qwen2_5_vl": _VLM_LLAMA_LIKE,
    "qwen2_vl": _VLM_LLAMA_LIKE,
    "qwen3_vl": _VLM_LLAMA_LIKE,
    "paligemma": _VLM_LLAMA_LIKE,
    "llava_next": _VLM_LLAMA_LIKE,
    "llava_onevision": _VLM_LLAMA_LIKE,
    "gemma4": _VLM_LLAMA_LIKE,  # its vision (and audio) tower wraps q_proj, ... around a `.linear`
    "qwen3_5": replace(_QWEN3_5, within="language_model"),
    "qwen3_5_moe": replace(_QWEN3_5_MOE, within="language_model"),
    "qwen3_vl_moe": _VLM_MOE,
    "idefics3": _IDEFICS_LIKE,
    "smolvlm": _IDEFICS_LIKE,
    "t5": _T5_LIKE,
    "mt5": _T5_LIKE,
    "bart": _BART_LIKE,
    "mbart": _BART_LIKE,
    "marian": _BART_LIKE,
    "pegasus": _BART_LIKE,
}


def preset_for(model_type: str | None) -> FamilyPreset | None:
    return FAMILY_PRESETS.get(model_type or "")


def name_matches(key: str, names) -> bool:
    """PEFT's list matching: the full name, or a suffix after a dot."""
    return any(key == n or key.endswith("." + n) for n in names)


def linear_features(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear or GPT-2 Conv1D, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    base = getattr(module, "base_layer", None)
    return linear_features(base) if base is not None else None


def fold_layer_indices(name: str) -> str:
    """'model.layers.3.mlp.up_proj' -> 'model.layers.*.mlp.up_proj' (for error messages)."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def linear_layer_names(model: nn.Module) -> list[str]:
    """The model's linear layer names with layer indices folded to '*' (for error messages)."""
    seen: dict[str, None] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)):
            seen.setdefault(fold_layer_indices(name), None)
    return list(seen)


def is_norm(module: nn.Module) -> bool:
    """LayerNorm / RMSNorm modules of any family (DeBERTa and LLaMA use their own classes), also the gated RMSNorm
    of linear-attention layers (Qwen3.5's Gated DeltaNet normalises its output, then multiplies by a gate)."""
    if (isinstance(module, (nn.LayerNorm, nn.GroupNorm))
            or type(module).__name__.endswith(("LayerNorm", "RMSNorm", "RMSNormGated"))):
        return any(True for _ in module.parameters(recurse=False))
    return False


def norm_module_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if name and is_norm(module)]

