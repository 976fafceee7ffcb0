"""transformers' own PEFT integration loads a LoRETTA adapter: `model.load_adapter(path)` on a plain
transformers model, and `AutoModelFor*.from_pretrained(adapter_folder)`, which reads the base model's
path from adapter_config.json. Both failed before 2026-11-30: transformers reads
`config.peft_type.value` (ours was a plain string), and it inserts the adapter's name after the
method's prefix, where a TT core's saved key already had one (loretta_rep_A.<name>.cores.0)."""

import json

import pytest
import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from loretta import get_peft_model
from loretta.peft_types import LorettaPeftType

from .test_tuners import METHODS
from .tiny_models import default_task, logits, perturb_trainable, tiny_batch, tiny_model

# transformers' load_adapter restores PEFT's modules_to_save copies (LoRETTA's layer norms and head, and
# LoRA's modules_to_save alike) from 5.18 on; before, they kept the base model's weights
LOADS_MODULES_TO_SAVE = Version(transformers.__version__) >= Version("5.18")
needs_modules_to_save_loading = pytest.mark.skipif(
    not LOADS_MODULES_TO_SAVE, reason=f"transformers {transformers.__version__} < 5.18 does not load modules_to_save")

AUTO = {"CAUSAL_LM": AutoModelForCausalLM, "SEQ_CLS": AutoModelForSequenceClassification,
        "SEQ_2_SEQ_LM": AutoModelForSeq2SeqLM}


def _trained_adapter(tmp_path, family, method, adapter_name="task_a", **config):
    """The base model saved in tmp_path/base, an adapter trained on it (stand-in: every trainable tensor
    moved: TT cores, biases, layer norms, tensorized head) saved in tmp_path/<adapter_name>, its logits."""
    task = default_task(family)
    tiny_model(family, task=task).save_pretrained(tmp_path / "base")
    model = get_peft_model(AUTO[task].from_pretrained(tmp_path / "base"), METHODS[method](task, **config),
                           adapter_name=adapter_name)
    perturb_trainable(model)
    batch = tiny_batch(model)
    model.save_pretrained(tmp_path)  # a non-default name: saved in tmp_path / adapter_name
    return AUTO[task], batch, logits(model, batch)


@needs_modules_to_save_loading
@pytest.mark.parametrize("family", ["llama", "gpt2", "deberta-v2", "bert", "t5"])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_load_adapter_on_a_transformers_model(tmp_path, family, method):
    auto, batch, expected = _trained_adapter(tmp_path, family, method)
    model = auto.from_pretrained(tmp_path / "base")
    info = model.load_adapter(tmp_path / "task_a", adapter_name="mine")
    assert not info.missing_keys and not info.unexpected_keys and not info.mismatched_keys
    torch.testing.assert_close(logits(model.eval(), batch), expected, rtol=0, atol=0)
    assert isinstance(model.peft_config["mine"].peft_type, LorettaPeftType)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_load_adapter_of_tt_layers_alone_on_any_transformers_5(tmp_path, method):
    """Without trained norms (or a head) nothing is in modules_to_save: this loads on transformers 5.0 too."""
    auto, batch, expected = _trained_adapter(tmp_path, "llama", method, trainable_layer_norms=False)
    model = auto.from_pretrained(tmp_path / "base")
    info = model.load_adapter(tmp_path / "task_a")
    assert not info.missing_keys and not info.unexpected_keys
    torch.testing.assert_close(logits(model.eval(), batch), expected, rtol=0, atol=0)


@needs_modules_to_save_loading
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_from_pretrained_of_an_adapter_folder(tmp_path, method):
    auto, batch, expected = _trained_adapter(tmp_path, "deberta-v2", method)
    config_file = tmp_path / "task_a" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(tmp_path / "base")  # on the Hub: the model's id
    config_file.write_text(json.dumps(config))
    model = auto.from_pretrained(tmp_path / "task_a")
    torch.testing.assert_close(logits(model.eval(), batch), expected, rtol=0, atol=0)


def test_the_peft_type_is_its_name_wherever_a_string_is_expected():
    """PEFT's registry dicts are keyed by the type; adapter_config.json stores the plain name."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config = METHODS["rep"]("CAUSAL_LM")
    assert config.peft_type == "LORETTA_REP" and config.peft_type.value == "LORETTA_REP"
    assert PEFT_TYPE_TO_CONFIG_MAPPING["LORETTA_REP"] is type(config)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[config.peft_type] is type(config)
    assert json.loads(json.dumps(config.to_dict()))["peft_type"] == "LORETTA_REP"


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_peft_mixed_model_refuses_with_the_type_named(method):
    """PeftMixedModel (LoRA / LoHa / LoKr / ... together) takes none of PEFT's non-LoRA-like methods; its
    refusal reads `peft_type.value` and was an AttributeError before."""
    from peft import PeftMixedModel

    config = METHODS[method]("CAUSAL_LM")
    with pytest.raises(ValueError, match=f"'{config.peft_type.value}' is not compatible with the `PeftMixedModel`"):
        PeftMixedModel(tiny_model("llama", task="CAUSAL_LM"), config)
