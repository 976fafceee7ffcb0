"""PEFT's layer selection options: layers_to_transform, layers_pattern, exclude_modules and "all-linear"."""

import re

import pytest
import torch
from peft import PeftModel

from loretta import LorettaAdpConfig, LorettaAdpLayer, LorettaRepConfig, LorettaRepLayer, get_peft_model
from loretta.presets import is_norm

from .tiny_models import tiny_batch, tiny_model

METHODS = {
    "adp": (lambda task, **kw: LorettaAdpConfig(task_type=task, tensor_rank=3, bottleneck_size=8, **kw),
            LorettaAdpLayer),
    "rep": (lambda task, **kw: LorettaRepConfig(task_type=task, tensor_rank=3, r=4, lora_dropout=0.0, **kw),
            LorettaRepLayer),
}
def _three_layer_model(family, task):
    return tiny_model(family, task=task, **({"n_layer": 3} if family == "gpt2" else {"num_hidden_layers": 3}))


LAYER_INDEX = re.compile(r"\.(?:layers|h|layer)\.(\d+)\.")


def _layers_of(model, cls):
    return {int(LAYER_INDEX.search(n)[1]) for n, m in model.named_modules() if isinstance(m, cls)}


def _trained_norms(model):
    return sorted(n.removesuffix(".modules_to_save.default") for n, m in model.named_modules()
                  if n.endswith(".modules_to_save.default") and is_norm(m))


@pytest.mark.parametrize("family, task, selection, kept", [
    ("llama", "CAUSAL_LM", dict(layers_to_transform=[1]), {1}),
    ("gpt2", "CAUSAL_LM", dict(layers_to_transform=0, layers_pattern="h"), {0}),
    ("bert", "SEQ_CLS", dict(layers_to_transform=[0], layers_pattern=["layer"]), {0}),
])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_only_the_selected_layers_get_adapters_and_trainable_norms(tmp_path, family, task, selection, kept, method):
    make, layer_cls = METHODS[method]
    model = get_peft_model(_three_layer_model(family, task), make(task, **selection))
    assert _layers_of(model, layer_cls) == kept
    norms = _trained_norms(model)
    in_layers = [n for n in norms if LAYER_INDEX.search(n)]
    assert in_layers and {int(LAYER_INDEX.search(n)[1]) for n in in_layers} == kept
    assert len(norms) > len(in_layers)  # the embedding / final norm, outside the numbered layers, still trains

    # the selection is part of the saved config: loading adapts the same layers and gives the same output
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
    batch = tiny_batch(model)
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(_three_layer_model(family, task), tmp_path).eval()
    assert _layers_of(loaded, layer_cls) == kept
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_exclude_modules_keeps_those_layers_unadapted(method):
    make, layer_cls = METHODS[method]
    excluded = ["layers.0.mlp.down_proj", "layers.0.self_attn.v_proj"]
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), make("CAUSAL_LM", exclude_modules=excluded))
    adapted = {n for n, m in model.named_modules() if isinstance(m, layer_cls)}
    assert adapted and not any(n.endswith(tuple(excluded)) for n in adapted)
    assert any(".layers.1." in n for n in adapted)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_norms_follow_exclude_modules(method):
    """As PEFT applies exclude_modules to each layer (a regex: a full match of the name; a list: the name or a
    dotted suffix), so to each norm: excluding layer 0's modules keeps its norms frozen too, like the layers
    that layers_to_transform leaves out; the other layers' and the final norm train."""
    make, layer_cls = METHODS[method]
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), make("CAUSAL_LM", exclude_modules=r".*\.layers\.0\..*"))
    assert _layers_of(model, layer_cls) == {1}
    norms = _trained_norms(model)
    assert not [n for n in norms if ".layers.0." in n]
    assert [n for n in norms if ".layers.1." in n] and "base_model.model.model.norm" in norms

    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), make("CAUSAL_LM", exclude_modules=["model.norm"]))
    norms = _trained_norms(model)
    assert "base_model.model.model.norm" not in norms and [n for n in norms if ".layers.0." in n]


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers_to_transform=[-1]), r"layers_to_transform must be a layer index or a list of them .* got \[-1\]"),
    (dict(layers_to_transform="0"), r"layers_to_transform must be .* got '0'"),
    (dict(layers_pattern="layers"), r"layers_pattern='layers' needs layers_to_transform"),
    (dict(target_modules=r".*q_proj", layers_to_transform=[0]), r"cannot be combined with a regex target_modules"),
])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_bad_layer_selection_is_named(method, kwargs, message):
    with pytest.raises(ValueError, match=message):
        METHODS[method][0]("CAUSAL_LM", **kwargs)


def test_a_selection_matching_nothing_names_it_and_lists_the_layers():
    config = METHODS["rep"][0]("CAUSAL_LM", layers_to_transform=[5])
    listed = r"'model\.layers\.\*\.self_attn\.q_proj'"
    with pytest.raises(ValueError, match=r"layers_to_transform=\[5\] matches none of .*" + listed):
        get_peft_model(tiny_model("llama", task="CAUSAL_LM"), config)


# each layer's linear modules, by family; the output / classification heads are never among them
ALL_LINEAR = {
    "llama": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj"},
    "roberta": {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense"},
    "gpt2": {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"},
}


@pytest.mark.parametrize("method", ["adp", "rep"])
@pytest.mark.parametrize("family, task", [("llama", "CAUSAL_LM"), ("roberta", "SEQ_CLS"), ("gpt2", "CAUSAL_LM"),
                                          ("llama", "SEQ_CLS")])
def test_all_linear_adapts_every_linear_layer_but_the_heads(tmp_path, method, family, task):
    make, cls = METHODS[method]
    model = get_peft_model(tiny_model(family, task=task), make(task, target_modules="all-linear"))
    adapted = {n.split("base_model.model.")[-1] for n, m in model.named_modules() if isinstance(m, cls)}
    per_layer = {LAYER_INDEX.split(n)[-1] for n in adapted}
    assert per_layer == ALL_LINEAR[family] and len(adapted) == 2 * len(per_layer)  # both layers, nothing else
    # the heads are trained whole (SEQ_CLS) or left alone (the LM head), not adapted
    assert not any(head in n for n in adapted for head in ("lm_head", "classifier", "score", "pooler"))
    labels = torch.tensor([0, 1]) if task == "SEQ_CLS" else tiny_batch(model)["input_ids"]
    model.train()
    model(**tiny_batch(model), labels=labels).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "cores" in n)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # as if trained: the round trip must carry every adapted layer's cores
                p.add_(torch.randn_like(p) * 0.05)
        expected = model(**tiny_batch(model)).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(family, task=task), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tiny_batch(loaded)).logits, expected)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_all_linear_on_token_classification_leaves_the_label_head_to_peft(method):
    from transformers import AutoConfig, AutoModelForTokenClassification

    make, cls = METHODS[method]
    bert = AutoModelForTokenClassification.from_config(
        AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             vocab_size=100, num_labels=3))
    model = get_peft_model(bert, make("TOKEN_CLS", target_modules="all-linear"))
    adapted = [n for n, m in model.named_modules() if isinstance(m, cls)]
    assert len(adapted) == 6 and not any("classifier" in n for n in adapted)
    ids = torch.randint(2, 100, (2, 8))
    model(input_ids=ids, labels=torch.zeros(2, 8, dtype=torch.long)).loss.backward()
    assert model.base_model.model.classifier.modules_to_save["default"].weight.grad is not None
