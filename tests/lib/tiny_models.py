"""Tiny models of every supported family, built from configs (no weights, no Hub)."""

import pytest
import torch
import transformers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForSeq2SeqLM,
                          AutoModelForSequenceClassification)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# distilbert: the head's hidden x hidden layer is a top-level layer (pre_classifier); modernbert: pre-norm,
# bias-free norms, fused Wqkv and gated Wi, local and global attention
ENCODERS = ["bert", "roberta", "deberta", "deberta-v2", "mpnet", "distilbert", "modernbert"]
# gpt_neox and phi3 fuse q, k, v into one layer (phi3 also gate and up); qwen3 normalises q and k per head;
# falcon runs attention and MLP in parallel from one norm, in its own FalconLinear layers
DECODERS = ["opt", "gpt2", "gpt_neox", "phi3", "llama", "mistral", "qwen3", "gemma", "gemma3_text", "falcon"]
FAMILIES = ENCODERS + DECODERS
# encoder-decoders (SEQ_2_SEQ_LM); "t5" is v1.0 (one `wi`), "t5-gated" v1.1 / FLAN-T5 (`wi_0`, `wi_1`)
SEQ2SEQ = ["t5", "bart"]
# preset families whose architecture repeats one above: placement and a training step are tested
SIBLING_ENCODERS = ["xlm-roberta", "electra", "camembert", "xlm-roberta-xl", "roberta-prelayernorm", "data2vec-text",
                    "longformer", "ernie", "megatron-bert"]
SIBLING_DECODERS = ["qwen2", "gemma2", "granite", "smollm3", "olmo2", "phi", "starcoder2", "bloom", "gptj",
                    "stablelm", "cohere", "cohere2", "olmo", "olmo3", "exaone4", "helium", "seed_oss", "ernie4_5",
                    "arcee", "apertus", "glm", "glm4", "xglm", "biogpt", "persimmon", "gpt_bigcode", "codegen", "mpt",
                    "ministral", "ministral3", "internlm3", "exaone", "hunyuan_v1_dense", "granite_swa", "cwm",
                    "nemotron", "vaultgemma", "gemma3n_text", "gemma4_text", "minicpm3", "qwen3_5_text"]
# latent attention (low-rank queries, keys and values from one latent), for MiniCPM3 and DeepSeek-V2/V3: a key
# and a value per head, as in the released models (kv_b_proj makes them; fewer key/value heads would repeat them)
MLA = dict(q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16,
           head_dim=8, num_key_value_heads=4)  # head_dim: the rotary part's
# Qwen3.5 / Qwen3-Next: a Gated DeltaNet (linear attention) layer, then a full-attention one
HYBRID = dict(layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2, linear_num_value_heads=4,
              linear_key_head_dim=16, linear_value_head_dim=16)
CONFIG_OPTIONS = {  # families whose defaults do not fit the generic sizes below
    "longformer": dict(attention_window=4),  # local attention over 4 tokens: the tiny batches span two windows
    "codegen": dict(rotary_dim=8),  # within a head of 16
    "apertus": dict(max_position_embeddings=16384),  # above its rope scaling's original context (8192)
    "minicpm3": MLA, "qwen3_5_text": HYBRID,
    # three layers, the last reusing the keys and values of the one before (Gemma 3n / Gemma 4 E2B, E4B); wider
    # heads in full-attention layers (as Gemma 4's 512 to 256)
    "gemma4_text": dict(num_hidden_layers=3, num_kv_shared_layers=1, global_head_dim=32, sliding_window=4,
                        layer_types=["sliding_attention", "full_attention", "full_attention"],
                        vocab_size_per_layer_input=100, hidden_size_per_layer_input=8),
    "gemma3n_text": dict(num_hidden_layers=3, num_kv_shared_layers=1, sliding_window=4,
                         layer_types=["sliding_attention", "full_attention", "full_attention"],
                         vocab_size_per_layer_input=100, hidden_size_per_layer_input=8, laurel_rank=4,
                         altup_num_inputs=2, activation_sparsity_pattern=[0.0, 0.0, 0.0]),
    "ministral3": dict(max_position_embeddings=262144),  # its YaRN scaling's context
}
# mixture-of-experts decoders: experts are fused 3-D parameters, LoRETTA_adp sits on the attention output
MOE_DECODERS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "phimoe", "gpt_oss", "glm4_moe",
                "ernie4_5_moe", "llama4_text", "hunyuan_v1_moe", "minimax_m2", "granitemoeshared", "flex_olmo", "afmoe",
                "solar_open", "cohere2_moe", "deepseek_v2", "deepseek_v3", "glm4_moe_lite", "qwen3_5_moe_text",
                "qwen3_next"]
MOE_EXPERTS = {  # four experts, two per token, under each family's names
    "mixtral": dict(num_local_experts=4), "granitemoe": dict(num_local_experts=4), "phimoe": dict(num_local_experts=4),
    "gpt_oss": dict(num_local_experts=4, layer_types=["sliding_attention", "full_attention"],
                    max_position_embeddings=131072),  # YaRN's expected context: no rope-scaling warning
    "qwen2_moe": dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=64),
    "qwen3_moe": dict(num_experts=4, moe_intermediate_size=32), "olmoe": dict(num_experts=4),
    # a dense first layer, then a mixture-of-experts one
    "glm4_moe": dict(n_routed_experts=4, moe_intermediate_size=32, first_k_dense_replace=1, n_group=1, topk_group=1),
    "ernie4_5_moe": dict(moe_num_experts=4, moe_k=2, moe_intermediate_size=32, moe_layer_start_index=1),
    "llama4_text": dict(num_local_experts=4, num_experts_per_tok=1, intermediate_size_mlp=128),
    "hunyuan_v1_moe": dict(num_experts=4, moe_topk=2), "minimax_m2": dict(num_local_experts=4),
    "granitemoeshared": dict(num_local_experts=4, shared_intermediate_size=64), "flex_olmo": dict(num_experts=4),
    "afmoe": dict(num_experts=4, moe_intermediate_size=32, num_dense_layers=1), "cohere2_moe": dict(num_experts=4),
    "solar_open": dict(n_routed_experts=4, moe_intermediate_size=32, n_group=1, topk_group=1),
    "deepseek_v2": dict(MLA, n_routed_experts=4, moe_intermediate_size=32, first_k_dense_replace=1),
    "deepseek_v3": dict(MLA, n_routed_experts=4, moe_intermediate_size=32, first_k_dense_replace=1, n_group=1,
                        topk_group=1),
    "glm4_moe_lite": dict(MLA, n_routed_experts=4, moe_intermediate_size=32, mlp_layer_types=["dense", "sparse"],
                          n_group=1, topk_group=1),
}
MOE_EXPERTS["qwen3_5_moe_text"] = MOE_EXPERTS["qwen3_next"] = dict(HYBRID, num_experts=4, moe_intermediate_size=32,
                                                                  shared_expert_intermediate_size=64)
SIBLING_SEQ2SEQ = ["mt5", "mbart", "marian", "pegasus"]
# vision-language models (text in, text out here): LoRETTA goes into the language model only
VLM_DECODERS = ["gemma3", "llava", "mistral3", "qwen2_5_vl", "qwen2_vl", "qwen3_vl", "paligemma", "llava_next",
                "llava_onevision", "idefics3", "smolvlm", "gemma4", "qwen3_5", "qwen3_5_moe", "qwen3_vl_moe"]
ALL_FAMILIES = FAMILIES + SEQ2SEQ + SIBLING_ENCODERS + SIBLING_DECODERS + MOE_DECODERS + VLM_DECODERS + SIBLING_SEQ2SEQ


# The released DeBERTa checkpoints use disentangled (relative-position) attention, which the configs'
# defaults leave off: microsoft/deberta-base (v1, separate pos_proj / pos_q_proj) and the v3 models
# (deberta-v2 code: shared keys, a LayerNorm on the relative embeddings, log buckets)
DEBERTA_ATTENTION = {
    "deberta": dict(relative_attention=True, pos_att_type=["c2p", "p2c"], position_biased_input=False,
                    max_relative_positions=-1, type_vocab_size=0, layer_norm_eps=1e-7),
    "deberta-v2": dict(relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                       max_relative_positions=-1, type_vocab_size=0, layer_norm_eps=1e-7, share_att_key=True,
                       norm_rel_ebd="layer_norm", position_buckets=16),
}


def default_task(family: str) -> str:
    if family in SEQ2SEQ + SIBLING_SEQ2SEQ or family == "t5-gated":
        return "SEQ_2_SEQ_LM"
    return "CAUSAL_LM" if family in DECODERS + SIBLING_DECODERS + MOE_DECODERS + VLM_DECODERS else "SEQ_CLS"


def _vlm_config(model_type: str):
    """A 2-layer LLaMA-like text decoder (vocabulary 300: the tiny batches' ids stay below the image tokens)
    beside a 1-layer vision tower."""
    text = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                intermediate_size=128, vocab_size=300, max_position_embeddings=256)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                  patch_size=8)
    # Qwen's multimodal rotary sections, for a head of 16
    mrope = dict(text, rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]))
    qwen_tokens = dict(image_token_id=299, video_token_id=298, vision_start_token_id=297)
    qwen_vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    clip, siglip = dict(vision, model_type="clip_vision_model"), dict(vision, model_type="siglip_vision_model")
    llama_text = dict(text, model_type="llama")
    kw = {
        "gemma3": dict(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=299,
                       boi_token_index=297, eoi_token_index=298),
        "paligemma": dict(text_config=dict(text, model_type="gemma"), vision_config=siglip, image_token_index=299,
                          projection_dim=64),
        "llava": dict(text_config=llama_text, vision_config=clip, image_token_index=299),
        "llava_next": dict(text_config=llama_text, vision_config=clip, image_token_index=299,
                           image_grid_pinpoints=[[32, 32]]),
        "llava_onevision": dict(text_config=dict(text, model_type="qwen2"), vision_config=siglip,
                                image_token_index=299, image_grid_pinpoints=[[32, 32]]),
        "mistral3": dict(text_config=dict(text, model_type="mistral"),
                         vision_config=dict(vision, model_type="pixtral", head_dim=16), image_token_index=299),
        "qwen2_vl": dict(text_config=mrope, vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2,
                                                               mlp_ratio=2), **qwen_tokens),
        "qwen2_5_vl": dict(text_config=mrope, vision_config=qwen_vision, **qwen_tokens),
        "qwen3_vl": dict(text_config=mrope, vision_config=dict(qwen_vision, deepstack_visual_indexes=[0]),
                         **qwen_tokens),
        # (transformers 5.0 builds its text model only with a pad_token_id)
        "qwen3_vl_moe": dict(text_config=dict(mrope, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                              pad_token_id=0),
                             vision_config=dict(qwen_vision, deepstack_visual_indexes=[0]), **qwen_tokens),
        "qwen3_5": dict(text_config=dict(mrope, **HYBRID), vision_config=qwen_vision, **qwen_tokens),
        "qwen3_5_moe": dict(text_config=dict(mrope, **MOE_EXPERTS["qwen3_5_moe_text"], num_experts_per_tok=2),
                            vision_config=qwen_vision, **qwen_tokens),
        "gemma4": dict(text_config=dict(text, vocab_size_per_layer_input=300, hidden_size_per_layer_input=8),
                       vision_config=dict(vision, num_key_value_heads=2, head_dim=16, position_embedding_size=64),
                       audio_config=None, image_token_id=299),
        "idefics3": dict(text_config=llama_text, vision_config=vision, image_token_id=299, scale_factor=2),
        "smolvlm": dict(text_config=llama_text, vision_config=vision, image_token_id=299, scale_factor=2),
    }[model_type]
    return AutoConfig.for_model(model_type, **kw)


def tiny_config(model_type: str, **overrides):
    if model_type.removesuffix("-gated") not in CONFIG_MAPPING:
        # a family newer than the installed transformers (the declared floor is older than the pinned version)
        pytest.skip(f"transformers {transformers.__version__} has no model_type {model_type!r}")
    if model_type in VLM_DECODERS:
        return _vlm_config(model_type)
    if model_type in ("t5", "mt5", "t5-gated"):
        kw = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=100, decoder_start_token_id=0)
        if model_type == "t5-gated":
            model_type = "t5"
            kw.update(feed_forward_proj="gated-gelu")
    elif model_type in ("bart", "mbart", "marian", "pegasus"):
        kw = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                  encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=100, max_position_embeddings=64,
                  decoder_start_token_id=0, bos_token_id=0, eos_token_id=1)
    elif model_type == "gpt2":
        kw = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=64)
    elif model_type == "gptj":
        kw = dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, vocab_size=100, n_positions=64, bos_token_id=0,
                  eos_token_id=0)
    elif model_type == "bloom":
        kw = dict(hidden_size=64, n_layer=2, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0)
    elif model_type == "falcon":
        kw = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100, bos_token_id=0,
                  eos_token_id=0)
    elif model_type == "distilbert":
        kw = dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=100, max_position_embeddings=64)
    elif model_type == "modernbert":
        # three layers: the first has no attention norm, the third attends locally (global every 2nd layer)
        kw = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, vocab_size=100,
                  max_position_embeddings=64, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                  global_attn_every_n_layers=2, local_attention=4)
    elif model_type == "opt":
        kw = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=64,
                  vocab_size=100, max_position_embeddings=64)
    else:
        kw = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100,
                  max_position_embeddings=64)
        if model_type in DECODERS + SIBLING_DECODERS + MOE_DECODERS:
            kw.update(num_key_value_heads=2, head_dim=16)  # grouped-query attention
        if model_type in MOE_DECODERS:
            kw.update(num_experts_per_tok=2)
            kw.update(MOE_EXPERTS[model_type])
        kw.update(CONFIG_OPTIONS.get(model_type, {}))
    if model_type in DEBERTA_ATTENTION:
        kw.update(DEBERTA_ATTENTION[model_type])
    if model_type in ("roberta", "xlm-roberta", "mpnet"):
        kw.update(pad_token_id=1)
    else:
        kw.update(pad_token_id=0)
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def tiny_model(model_type: str, task: str = "SEQ_CLS", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    if task == "SEQ_CLS":
        config.num_labels = overrides.get("num_labels", 2)
        model = AutoModelForSequenceClassification.from_config(config)
    elif task == "SEQ_2_SEQ_LM":
        model = AutoModelForSeq2SeqLM.from_config(config)
    elif model_type in VLM_DECODERS:
        model = AutoModelForImageTextToText.from_config(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def tiny_batch(model, batch: int = 2, length: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 100, (batch, length), generator=g)
    if getattr(model.config, "is_encoder_decoder", False):
        # BART-family classifiers read the sentence at its last <eos>: every sample ends with one
        ids[:, -1] = model.config.eos_token_id
        decoder_ids = torch.cat([torch.full((batch, 1), model.config.decoder_start_token_id), ids[:, :-1]], dim=1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": decoder_ids}
    if model.config.model_type in ("gemma3", "paligemma"):  # which tokens are image tokens (asked for in training)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def perturb_trainable(model, seed: int = 0, scale: float = 0.05) -> None:
    """Stand-in for training: move every trainable parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
