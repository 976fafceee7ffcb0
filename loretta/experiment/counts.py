"""Trainable parameters of a composed run config without weights: the model built on the meta device
from its architecture (the paper models' config.json sizes, below), the method applied as `train()`
applies it (loop.apply_method), counted as `results.json` counts (results.count_parameters).

    cfg = compose(["experiment=table2_llama2_7b", "task=copa", "method=ia3"])
    trainable, total = counts.count(cfg)            # (614,400, 6,739,030,016)

scripts/param_counts.py prints these beside the paper's figures; tests/runner/test_baseline_counts.py
pins them.
"""

from __future__ import annotations

# The Hub models' config.json sizes (no Hub here). DeBERTa (v1): relative attention, no absolute
# positions and no token types, as microsoft/deberta-base.
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "deberta-base": ("deberta", dict(relative_attention=True, pos_att_type=["c2p", "p2c"],
                                     position_biased_input=False, max_relative_positions=-1, type_vocab_size=0,
                                     layer_norm_eps=1e-7)),
    "roberta-base": ("roberta", dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1)),
    "llama2-7b": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)),
    "llama2-13b": ("llama", dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                 num_attention_heads=40, num_key_value_heads=40, vocab_size=32000)),
    # grouped-query attention: k_proj and v_proj are 8192 -> 1024
    "llama2-70b": ("llama", dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                 num_attention_heads=64, num_key_value_heads=8, vocab_size=32000)),
}


def build(cfg, num_labels: int | None = None):
    """`cfg`'s model (its `model.name` one of ARCHITECTURES) on the meta device with `cfg.method` applied.
    `num_labels`: of an encoder's classification head; None: the task's, as a run has it (the paper's
    Table 1 counts are those of a 2-label task: SST-2, MRPC, CoLA, QNLI, QQP, RTE)."""
    from tasks import get_task
    from transformers import AutoConfig

    from . import models
    from .checks import ConfigError
    from .loop import apply_method

    if cfg.model.name not in ARCHITECTURES:
        raise ConfigError(f"model {cfg.model.name!r}: no architecture to build without weights; "
                          f"known: {', '.join(ARCHITECTURES)}")
    model_type, sizes = ARCHITECTURES[cfg.model.name]
    if num_labels is None:
        num_labels = get_task(cfg.task.name).num_labels
    loaded = models.load_on_meta(cfg.model, AutoConfig.for_model(model_type, **sizes), num_labels=num_labels)
    return apply_method(cfg, loaded, num_labels)


def count(cfg, num_labels: int | None = None) -> tuple[int, int]:
    """(trainable, total) parameters of `cfg`'s run, as results.json records them."""
    from .results import count_parameters

    return count_parameters(build(cfg, num_labels))
