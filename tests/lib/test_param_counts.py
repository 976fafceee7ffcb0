"""The paper's trainable-parameter counts, on full-size models built on the meta device (no weights)."""

import pytest
import torch
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model

from .tiny_models import DEBERTA_ATTENTION


def _meta(build, config):
    with torch.device("meta"):
        return build(config)


def deberta_base():
    # microsoft/deberta-base's attention settings (relative positions: no extra trainable norm)
    config = AutoConfig.for_model("deberta", num_labels=2, **DEBERTA_ATTENTION["deberta"])
    return _meta(AutoModelForSequenceClassification.from_config, config)


def roberta_base():
    cfg = AutoConfig.for_model("roberta", vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                               num_labels=2)
    return _meta(AutoModelForSequenceClassification.from_config, cfg)


def llama2_7b():
    cfg = AutoConfig.for_model("llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
    return _meta(AutoModelForCausalLM.from_config, cfg)


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "build, config, expected",
    [
        (deberta_base, LorettaAdpConfig(task_type="SEQ_CLS", tensor_rank=5), 99_194),
        (deberta_base, LorettaRepConfig(task_type="SEQ_CLS", tensor_rank=5), 55_766),
        (llama2_7b, LorettaAdpConfig(task_type="CAUSAL_LM", tensor_rank=5), 876_800),
        (llama2_7b, LorettaRepConfig(task_type="CAUSAL_LM", tensor_rank=8), 516_096),
        (llama2_7b, LoraConfig(task_type="CAUSAL_LM", r=8, target_modules=["q_proj", "v_proj"]), 4_194_304),
        (deberta_base, LoraConfig(task_type="SEQ_CLS", r=8, target_modules=["in_proj"]), 296_450),
    ],
    ids=["deberta-adp", "deberta-rep", "llama7b-adp", "llama7b-rep", "llama7b-lora", "deberta-lora"],
)
def test_paper_counts_exactly(build, config, expected):
    assert trainable(get_peft_model(build(), config)) == expected


def test_ablation_counts_table_11_and_6():
    # adp without trainable layer norms (paper: 0.061M) and with a regular dense head (0.688M)
    assert trainable(get_peft_model(deberta_base(), LorettaAdpConfig(task_type="SEQ_CLS",
                                                                     trainable_layer_norms=False))) == 60_794
    assert trainable(get_peft_model(deberta_base(), LorettaAdpConfig(task_type="SEQ_CLS",
                                                                     tensorized_head=False))) == 687_938
    # rank 2 (paper: 0.067M)
    assert trainable(get_peft_model(deberta_base(), LorettaAdpConfig(task_type="SEQ_CLS", tensor_rank=2))) == 67_778


def test_roberta_base_presets():
    # reported beside the paper's 0.10M / 0.07M in the README
    assert trainable(get_peft_model(roberta_base(), LorettaAdpConfig(task_type="SEQ_CLS"))) == 99_194
    assert trainable(get_peft_model(roberta_base(), LorettaRepConfig(task_type="SEQ_CLS"))) == 69_626


def test_a_newer_family_at_full_size_qwen3_8b():
    """The Qwen3 preset at Qwen3-8B's published size, counted by hand: per layer three adapters
    (gate/up input, down output) of TT 4096x64 [16,16,16,4,4,4] + TT 64x4096 [4,4,4,16,16,16] at rank 5
    (1,100 each) with biases 64 + 4,096, and the norms: two of 4,096, q_norm and k_norm of 128 (per head)."""
    cfg = AutoConfig.for_model("qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936)
    adapter = 1_100 + 64 + 1_100 + 4_096
    norms = 2 * 4_096 + 2 * 128
    expected = 36 * (3 * adapter + norms) + 4_096  # + the final norm
    model = get_peft_model(_meta(AutoModelForCausalLM.from_config, cfg), LorettaAdpConfig(task_type="CAUSAL_LM"))
    assert trainable(model) == expected == 995_104


def test_a_top_level_head_at_full_size_distilbert_base():
    """The DistilBERT preset at distilbert-base's size, counted by hand: two adapters per layer (out_lin and
    lin2 outputs) of TT 768x64 [8,8,12,8,8] + TT 64x768 at rank 5 (780 each) with biases 64 + 768; the
    norms (1,536 each): the embeddings' and two per layer; the head: pre_classifier as TT 768x768
    [8,8,12,12,8,8] (1,080) with its bias, and the 2-label classifier."""
    cfg = AutoConfig.for_model("distilbert", dim=768, hidden_dim=3072, n_layers=6, n_heads=12, vocab_size=30522,
                               num_labels=2)
    adapter = 780 + 64 + 780 + 768
    norms = (1 + 6 * 2) * 1_536
    head = 1_080 + 768 + 768 * 2 + 2
    model = get_peft_model(_meta(AutoModelForSequenceClassification.from_config, cfg),
                           LorettaAdpConfig(task_type="SEQ_CLS"))
    assert trainable(model) == 6 * 2 * adapter + norms + head == 52_058


def test_a_mixture_of_experts_at_full_size_mixtral_8x7b():
    """The MoE preset at Mixtral-8x7B's size, counted by hand: one adapter per layer, on the sparse block's output
    (the experts are fused 3-D parameters, not linear layers), of TT 4096x64 + TT 64x4096 at rank 5 (1,100
    each) with biases 64 + 4,096; the norms: two of 4,096 per layer and the final one. The router and the
    experts stay frozen."""
    cfg = AutoConfig.for_model("mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
                               num_experts_per_tok=2, vocab_size=32000)
    adapter = 1_100 + 64 + 1_100 + 4_096
    model = get_peft_model(_meta(AutoModelForCausalLM.from_config, cfg), LorettaAdpConfig(task_type="CAUSAL_LM"))
    assert trainable(model) == 32 * (adapter + 2 * 4_096) + 4_096 == 469_760


def test_latent_attention_at_full_size_deepseek_v3():
    """DeepSeek-V3's published size, counted by hand. The norms, which both methods train: two of 7,168 per layer,
    and the latent attention's own on the query's (1,536) and the keys' and values' (512) latents, and the final
    one. LoRETTA_adp: one adapter per layer on the feed-forward block's output (the sparse block; in the first
    three layers the dense MLP, which has the same name) of TT 7168x64
    [4,4,7,8,8,8,8] + TT 64x7168 at rank 5 (935 each) with biases 64 + 7,168. LoRETTA_rep at rank 8 (no v_proj):
    on q_b_proj (1,536 -> 128 heads x 192) with A = TT 1536x8 [4,6,8,8,8] (1,504) and B = TT 8x24576
    [8,8,8,8,8,6] (2,160), and on kv_b_proj (512 -> 128 x (128 + 128)) with A = TT 512x8 [8,8,8,8] (1,152) and
    B = TT 8x32768 [8,8,8,8,8,8] (2,176)."""
    cfg = AutoConfig.for_model(
        "deepseek_v3", hidden_size=7168, intermediate_size=18432, num_hidden_layers=61, num_attention_heads=128,
        num_key_value_heads=128, n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8,
        moe_intermediate_size=2048, first_k_dense_replace=3, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_group=8, topk_group=4, vocab_size=129280)
    norms = 61 * (2 * 7_168 + 1_536 + 512) + 7_168
    adp = get_peft_model(_meta(AutoModelForCausalLM.from_config, cfg), LorettaAdpConfig(task_type="CAUSAL_LM"))
    assert trainable(adp) == 61 * (935 + 64 + 935 + 7_168) + norms == 1_561_814
    rep = get_peft_model(_meta(AutoModelForCausalLM.from_config, cfg),
                         LorettaRepConfig(task_type="CAUSAL_LM", tensor_rank=8))
    assert trainable(rep) == 61 * (1_504 + 2_160 + 1_152 + 2_176) + norms == 1_433_104


def test_every_expert_at_full_size_mixtral_8x7b():
    """Mixtral-8x7B's experts adapted (target_parameters), counted by hand: in each of 32 layers, 8 experts with
    their own LoRETTA_rep factors at rank 8 on gate_up_proj (4,096 -> 2 x 14,336): A = TT 4096x8 [16,16,8,4,4]
    (1,952), B = TT 8x28672 [8,8,8,8,8,7] (2,168); on down_proj (14,336 -> 4,096): A = TT 14336x8 [4,7,8,8,8,8]
    (2,080), B = TT 8x4096 [16,16,8,4,4] (1,952). Nothing else trains (target_modules=[], no norms)."""
    cfg = AutoConfig.for_model("mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
                               num_experts_per_tok=2, vocab_size=32000)
    config = LorettaRepConfig(task_type="CAUSAL_LM", tensor_rank=8, lora_dropout=0.0, target_modules=[],
                              target_parameters=["experts.gate_up_proj", "experts.down_proj"],
                              trainable_layer_norms=False)
    rep = get_peft_model(_meta(AutoModelForCausalLM.from_config, cfg), config)
    assert trainable(rep) == 32 * 8 * (1_952 + 2_168 + 2_080 + 1_952) == 2_086_912


def test_an_encoder_decoder_at_full_size_flan_t5_large():
    """The T5 preset at FLAN-T5-large's published size, counted by hand: each of the 24 encoder and 24
    decoder feed-forward blocks has three adapters (gated wi_0 / wi_1 input, wo output) of TT 1024x64
    [4,4,8,8,8,8] + TT 64x1024 [8,8,8,8,4,4] at rank 5 (760 each) with biases 64 + 1,024; the norms (weight
    only, 1,024): two per encoder layer, three per decoder layer (cross-attention's), and each stack's final."""
    cfg = AutoConfig.for_model("t5", d_model=1024, d_ff=2816, d_kv=64, num_layers=24, num_heads=16,
                               feed_forward_proj="gated-gelu", vocab_size=32128, tie_word_embeddings=False)
    adapter = 760 + 64 + 760 + 1_024
    norms = (24 * 2 + 1 + 24 * 3 + 1) * 1_024
    model = get_peft_model(_meta(AutoModelForSeq2SeqLM.from_config, cfg), LorettaAdpConfig(task_type="SEQ_2_SEQ_LM"))
    assert trainable(model) == 48 * 3 * adapter + norms == 500_480


def test_the_readme_tables_are_what_the_script_prints():
    """scripts/param_counts.py's tables appear in the README row for row (bold aside)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "scripts/param_counts.py"], cwd=repo, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 3 + 5 + 11 + 3  # three headers, the paper's five models, eleven newer ones, three with experts
    readme = (repo / "README.md").read_text().replace("**", "")
    assert [row for row in rows if row not in readme] == []
