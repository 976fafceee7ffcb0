"""Trainable parameters of each method on the paper's models, beside the paper's figures, and on
models newer than the paper (their published configs).

    python scripts/param_counts.py              # Markdown tables (models built on the meta device: no weights);
                                                # the last: the MoE models' experts adapted (target_parameters)
    python scripts/param_counts.py --baselines  # Tables 1-3's baselines, as the runner builds them, beside the paper

Counts what the paper counts: TT cores, adapter biases, layer norms, tensorized head, label head. The
baselines of Tables 1-3 (`--baselines`) are built as the runner builds them: the table preset's config
composed by Hydra, the model on the meta device and the method applied by loretta/experiment/counts.py,
counted as results.json counts (tests/runner/test_baseline_counts.py pins them).
"""

from __future__ import annotations

import torch
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model
from loretta.experiment import ConfigError, counts  # counts.ARCHITECTURES: the paper models' config.json sizes


def _paper_model(key: str, task: str, lora_targets: list[str], **extra) -> tuple:
    model_type, sizes = counts.ARCHITECTURES[key]
    return task, model_type, dict(sizes, **extra), lora_targets


MODELS = {
    "DeBERTa-base": _paper_model("deberta-base", "SEQ_CLS", ["in_proj"], num_labels=2),
    "RoBERTa-base": _paper_model("roberta-base", "SEQ_CLS", ["query", "value"], num_labels=2),
    "LLaMA-2-7B": _paper_model("llama2-7b", "CAUSAL_LM", ["q_proj", "v_proj"]),
    "LLaMA-2-13B": _paper_model("llama2-13b", "CAUSAL_LM", ["q_proj", "v_proj"]),
    "LLaMA-2-70B": _paper_model("llama2-70b", "CAUSAL_LM", ["q_proj", "v_proj"]),
}

# Models the paper did not use (published configs): what the family presets give at these sizes
MODERN = {
    "Llama-3.1-8B": ("CAUSAL_LM", "llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
                     ["q_proj", "v_proj"]),
    "Mistral-7B-v0.3": ("CAUSAL_LM", "mistral", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                                     num_attention_heads=32, num_key_value_heads=8, vocab_size=32768),
                        ["q_proj", "v_proj"]),
    "Qwen3-8B": ("CAUSAL_LM", "qwen3", dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                            num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                            vocab_size=151936), ["q_proj", "v_proj"]),
    "Phi-3-mini": ("CAUSAL_LM", "phi3", dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                                             num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                                             pad_token_id=32000), ["qkv_proj"]),
    "Gemma-2-9B": ("CAUSAL_LM", "gemma2", dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                                               num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                                               vocab_size=256000), ["q_proj", "v_proj"]),
    "Mixtral-8x7B": ("CAUSAL_LM", "mixtral", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                                  num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
                                                  num_experts_per_tok=2, vocab_size=32000), ["q_proj", "v_proj"]),
    "Qwen3-30B-A3B": ("CAUSAL_LM", "qwen3_moe", dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
                                                     num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                                                     num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
                                                     vocab_size=151936), ["q_proj", "v_proj"]),
    # latent attention (no v_proj): LoRETTA_rep and LoRA on the query's and the keys' and values' up-projections
    "DeepSeek-V3": ("CAUSAL_LM", "deepseek_v3", dict(hidden_size=7168, intermediate_size=18432, num_hidden_layers=61,
                                                     num_attention_heads=128, num_key_value_heads=128,
                                                     n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8,
                                                     moe_intermediate_size=2048, first_k_dense_replace=3,
                                                     q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                                                     qk_rope_head_dim=64, v_head_dim=128, n_group=8, topk_group=4,
                                                     vocab_size=129280), ["q_b_proj", "kv_b_proj"]),
    # encoders newer than (or left out of) the paper, 2 labels
    "ModernBERT-base": ("SEQ_CLS", "modernbert", dict(hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
                                                      num_attention_heads=12, vocab_size=50368, num_labels=2),
                        ["Wqkv"]),
    "DistilBERT-base": ("SEQ_CLS", "distilbert", dict(dim=768, hidden_dim=3072, n_layers=6, n_heads=12,
                                                      vocab_size=30522, num_labels=2), ["q_lin", "v_lin"]),
    # an encoder-decoder: the adapters sit in both stacks' gated feed-forward blocks (wi_0, wi_1, wo); LoRA
    # and LoRETTA_rep on the query and value of self- and cross-attention
    "FLAN-T5-large": ("SEQ_2_SEQ_LM", "t5", dict(d_model=1024, d_ff=2816, d_kv=64, num_layers=24, num_heads=16,
                                                 feed_forward_proj="gated-gelu", vocab_size=32128,
                                                 tie_word_embeddings=False), ["q", "v"]),
}

# The mixture-of-experts models above, their experts' stacked weights adapted (target_parameters)
EXPERT_MODELS = ["Mixtral-8x7B", "Qwen3-30B-A3B", "DeepSeek-V3"]
EXPERT_WEIGHTS = ["experts.gate_up_proj", "experts.down_proj"]

# The paper's Tables 1-3 (trainable parameters, millions)
PAPER = {
    "DeBERTa-base": {"adp": "0.10M", "rep": "0.05M", "lora": "0.30M"},
    "RoBERTa-base": {"adp": "0.10M", "rep": "0.07M", "lora": "0.63M"},
    "LLaMA-2-7B": {"adp": "0.88M", "rep": "0.51M", "lora": "4.19M"},
    "LLaMA-2-13B": {"adp": "1.67M", "rep": "0.77M", "lora": "6.55M"},
    "LLaMA-2-70B": {"adp": "4.79M", "rep": "1.99M", "lora": "16.38M"},
}


def count(name: str, method: str, **overrides) -> int:
    task, model_type, config_kw, lora_targets = {**MODELS, **MODERN}[name]
    config = AutoConfig.for_model(model_type, **config_kw)
    auto = {"SEQ_CLS": AutoModelForSequenceClassification, "SEQ_2_SEQ_LM": AutoModelForSeq2SeqLM}.get(
        task, AutoModelForCausalLM)
    with torch.device("meta"):
        model = auto.from_config(config)
    peft_config = {
        "adp": lambda: LorettaAdpConfig(task_type=task, **overrides),
        "rep": lambda: LorettaRepConfig(task_type=task, **overrides),
        "lora": lambda: LoraConfig(task_type=task, r=8, target_modules=lora_targets),
        # the experts alone: no other layer, no norm
        "rep_experts": lambda: LorettaRepConfig(task_type=task, target_modules=[], target_parameters=EXPERT_WEIGHTS,
                                                lora_dropout=0.0, trainable_layer_norms=False, **overrides),
        "lora_experts": lambda: LoraConfig(task_type=task, r=8, target_modules=[], target_parameters=EXPERT_WEIGHTS),
    }[method]()
    # LoRA's expert factors are created on the meta device as the model is (DeepSeek-V3's: 2.4G floats)
    model = get_peft_model(model, peft_config, low_cpu_mem_usage=method == "lora_experts")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# The baselines of Tables 1-3: (preset, a task of it with 2 labels, method, the paper's printed figure, M)
BASELINES = [
    ("table1_deberta", "rte", "ft", "139.19"), ("table1_deberta", "rte", "adapters_r8", "0.94"),
    ("table1_deberta", "rte", "lora", "0.30"), ("table1_deberta", "rte", "lora_r4", "0.15"),
    ("table1_deberta", "rte", "prompt", "0.01"), ("table1_deberta", "rte", "prefix", "0.15"),
    ("table1_deberta", "rte", "bitfit", "0.10"), ("table1_roberta", "rte", "bitfit", "0.10"),
    ("table1_roberta", "rte", "lora", "0.63"),
    ("table2_llama2_7b", "copa", "ft", "6738.42"), ("table2_llama2_7b", "copa", "adapters", "50.33"),
    ("table2_llama2_7b", "copa", "lora", "4.19"), ("table2_llama2_7b", "copa", "prefix", "1.31"),
    ("table2_llama2_7b", "copa", "ia3", "0.60"),
    ("table3_llama2_13b", "squad", "adapters", "79.05"), ("table3_llama2_13b", "squad", "lora", "6.55"),
    ("table3_llama2_13b", "squad", "ia3", "0.96"),
    ("table3_llama2_70b", "squad", "adapters", "252.97"), ("table3_llama2_70b", "squad", "lora", "16.38"),
    ("table3_llama2_70b", "squad", "ia3", "2.45"),
]


def baselines() -> None:
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    print("| table | model | method | ours (runner) | ours, M | paper, M | |")
    print("|---|---|---|---:|---:|---:|---|")
    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        for preset, task, method, paper in BASELINES:
            cfg = compose(config_name="config", overrides=[f"experiment={preset}", f"task={task}", f"method={method}"])
            table = preset.split("_")[0]
            try:
                trainable, _ = counts.count(cfg)
            except ConfigError:  # DeBERTa (v1) prefix: our encoder prefix does not reach its attention
                print(f"| {table} | {cfg.model.name} | {method} | not built | | {paper} | refused |")
                continue
            ours = f"{trainable / 1e6:.{len(paper.split('.')[1])}f}"
            verdict = "agrees" if ours == paper else "differs"
            print(f"| {table} | {cfg.model.name} | {method} | {trainable:,} | {ours} | {paper} | {verdict} |")


def main() -> None:
    print("| model | LoRETTA_adp (rank 5) | LoRETTA_rep (rank 5) | LoRETTA_rep (rank 8) | LoRA r=8 (peft) | "
          "paper adp / rep / LoRA |")
    print("|---|---:|---:|---:|---:|---|")
    for name in MODELS:
        adp = count(name, "adp", tensor_rank=5)
        rep5 = count(name, "rep", tensor_rank=5)
        rep8 = count(name, "rep", tensor_rank=8)
        lora = count(name, "lora")
        paper = PAPER[name]
        print(f"| {name} | {adp:,} | {rep5:,} | {rep8:,} | {lora:,} | "
              f"{paper['adp']} / {paper['rep']} / {paper['lora']} |")
    print()
    print("| model not in the paper | LoRETTA_adp (rank 5) | LoRETTA_rep (rank 8) | "
          "LoRA r=8 (peft; the layers LoRETTA_rep adapts) | adp / LoRA | rep / LoRA |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in MODERN:
        adp, rep8, lora = count(name, "adp", tensor_rank=5), count(name, "rep", tensor_rank=8), count(name, "lora")
        print(f"| {name} | {adp:,} | {rep8:,} | {lora:,} | {adp / lora:.2f}x | {rep8 / lora:.2f}x |")
    print()
    print("| experts adapted (`target_parameters`) | expert weight matrices | LoRETTA_rep (rank 8) | "
          "LoRA r=8 (peft) | rep / LoRA |")
    print("|---|---:|---:|---:|---:|")
    for name in EXPERT_MODELS:
        rep8, lora = count(name, "rep_experts", tensor_rank=8), count(name, "lora_experts")
        _, _, sizes, _ = MODERN[name]
        experts = next(sizes[k] for k in ("num_local_experts", "num_experts", "n_routed_experts") if k in sizes)
        moe_layers = sizes["num_hidden_layers"] - sizes.get("first_k_dense_replace", 0)
        print(f"| {name} | {2 * experts * moe_layers:,} | {rep8:,} | {lora:,} | {rep8 / lora:.3f}x |")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baselines", action="store_true",
                        help="Tables 1-3's baselines as the runner builds them, beside the paper's figures")
    if parser.parse_args().baselines:
        baselines()
    else:
        main()
