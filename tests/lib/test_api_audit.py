"""What a PEFT user does routinely, beyond test_tuners.py: adapters saved and loaded under other names,
adapters added or loaded beside the active one, reentrant gradient checkpointing, generation, configs
on disk, and the trainable-parameter report."""

import json
import re

import pytest
import torch
from peft import PeftConfig, PeftModel
from safetensors.torch import load_file, save_file

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model

from .test_tuners import METHODS
from .tiny_models import default_task, logits, perturb_trainable, tiny_batch, tiny_model

NO_DROPOUT = {"gpt2": dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)}  # gradients compared across runs


def _trainable(model) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_an_adapter_loads_under_any_name(tmp_path, family, method):
    """PEFT's checkpoints do not depend on the adapter's name: an adapter trained as "task_a" loads with
    `PeftModel.from_pretrained(base, path)` (named "default"), and one saved as "default" under any
    name. The TT cores sit one level deeper than LoRA's weights (`loretta_rep_A.<name>.cores.0`), where
    PEFT does not strip the name: their saved keys kept it, and an adapter loaded under another name
    silently kept its freshly initialised cores (PEFT only warned about missing keys). Their saved keys
    now drop it, as LoRA's do."""
    task = default_task(family)
    model = get_peft_model(tiny_model(family, task=task), METHODS[method](task), adapter_name="task_a")
    perturb_trainable(model)
    batch = tiny_batch(model)
    expected = logits(model, batch)
    model.save_pretrained(tmp_path)  # a non-default name: saved in tmp_path / "task_a"

    loaded = PeftModel.from_pretrained(tiny_model(family, task=task), tmp_path / "task_a")
    assert loaded.active_adapter == "default"
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=0)

    loaded.load_adapter(tmp_path / "task_a", adapter_name="again")
    loaded.set_adapter("again", inference_mode=True)
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=0)

    # and into the model being trained, trainable, with the trained set of the adapter it copies
    model.load_adapter(tmp_path / "task_a", adapter_name="copy", is_trainable=True)
    model.set_adapter("copy")
    torch.testing.assert_close(logits(model, batch), expected, rtol=0, atol=0)
    as_copy = _trainable(model)
    model.set_adapter("task_a")
    assert as_copy == sorted(n.replace(".task_a.", ".copy.") for n in _trainable(model))


def test_saved_keys_do_not_name_the_adapter(tmp_path):
    """As LoRA's: a checkpoint is the same whatever the adapter was called, so transformers' own loading
    (which inserts the name after the method's prefix, test_transformers_loading.py) finds the cores."""
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS["rep"]("CAUSAL_LM"), adapter_name="task_a")
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "task_a" / "adapter_model.safetensors")
    assert not [k for k in saved if "task_a" in k]
    assert any(k.endswith(".loretta_rep_A.cores.0") for k in saved)
    assert any(k.endswith(".loretta_rep_B.initial_cores.2") for k in saved)


def _in_the_earlier_format(saved: dict, name: str) -> dict:
    """Before 2026-11-30 a TT core's saved key kept the adapter's name (loretta_rep_A.<name>.cores.0)."""
    return {re.sub(r"(\.loretta_\w+)(\.(?:cores|initial_cores)\.\d+)$", rf"\1.{name}\2", k): v for k, v in saved.items()}


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_adapters_saved_in_the_earlier_format_load_under_any_name(tmp_path, method):
    model = get_peft_model(tiny_model("bert"), METHODS[method]("SEQ_CLS"), adapter_name="old")
    perturb_trainable(model)
    batch = tiny_batch(model)
    expected = logits(model, batch)
    model.save_pretrained(tmp_path)
    file = tmp_path / "old" / "adapter_model.safetensors"
    earlier = _in_the_earlier_format(load_file(file), "old")
    assert sum(".old.cores." in k for k in earlier) > 0
    save_file(earlier, file)
    loaded = PeftModel.from_pretrained(tiny_model("bert"), tmp_path / "old", adapter_name="new")
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "distilbert", "llama"])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_an_adapter_added_or_loaded_beside_the_active_one_trains_nothing(tmp_path, family, method):
    """PEFT's add_adapter leaves the new, inactive adapter frozen, and load_adapter(is_trainable=False)
    loads it for inference only. The tensorized head's TT layer, put into the adapter's copy of the head
    after PEFT had frozen that copy, stayed trainable: an optimizer over the trainable parameters also
    trained the second adapter's head, and print_trainable_parameters counted it."""
    task = default_task(family)
    model = get_peft_model(tiny_model(family, task=task), METHODS[method](task))
    trained = _trainable(model)
    counts = model.get_nb_trainable_parameters()
    model.add_adapter("second", METHODS[method](task))
    assert _trainable(model) == trained
    assert model.get_nb_trainable_parameters()[0] == counts[0]
    model.set_adapter("second")
    assert _trainable(model) == sorted(n.replace(".default.", ".second.") for n in trained)

    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(family, task=task), tmp_path)
    loaded.load_adapter(tmp_path / "second", adapter_name="second")
    assert _trainable(loaded) == []
    resumed = PeftModel.from_pretrained(tiny_model(family, task=task), tmp_path, is_trainable=True)
    resumed.load_adapter(tmp_path / "second", adapter_name="second")  # inactive, for inference
    assert _trainable(resumed) == trained


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["adp", "rep"])
@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_the_gradients_of_the_plain_model(family, method, reentrant):
    """With use_reentrant=True (torch's older checkpoint, DeepSpeed's, what PEFT's
    prepare_model_for_kbit_training asks for by default) the first backward failed: "Trying to backward
    through the graph a second time". Each checkpointed layer's recomputation ran its own backward
    through the TT matrices rebuilt for all layers together before the forward, a graph they share."""
    task = "CAUSAL_LM"
    model = get_peft_model(tiny_model(family, task=task, **NO_DROPOUT.get(family, {})), METHODS[method](task))
    perturb_trainable(model)
    batch = tiny_batch(model)

    def grads():
        model.train().zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads()
    model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    for _ in range(2):  # a second step too: nothing of the first one's graph is used again
        checkpointed = grads()
        assert checkpointed.keys() == plain.keys()
        for name, grad in plain.items():
            torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


# each its own attention and cache: ALiBi (bloom, mpt), multi-query fused q,k,v (falcon, gpt_bigcode), partial
# rotary (gptj, codegen), mixture of experts (mixtral), sliding windows and attention sinks (gpt_oss), linear
# attention's recurrent state (qwen3_5_text, qwen3_next), latent attention (deepseek_v3), keys and values shared
# across layers (gemma3n_text, gemma4_text), chunked attention (llama4_text)
@pytest.mark.parametrize("family", ["llama", "gpt2", "falcon", "bloom", "mpt", "gpt_bigcode", "gptj", "codegen",
                                    "mixtral", "gpt_oss", "qwen3_5_text", "qwen3_next", "deepseek_v3", "gemma3n_text",
                                    "gemma4_text", "llama4_text"])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_generate_with_the_adapter_and_without_it(family, method):
    model = get_peft_model(tiny_model(family, task="CAUSAL_LM"), METHODS[method]("CAUSAL_LM"))
    perturb_trainable(model)
    batch = tiny_batch(model)
    out = model.generate(**batch, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    prefix = out.sequences[:, :-1]
    with torch.no_grad():  # the last step, with its cache, is the full forward of the adapted model
        full = model(input_ids=prefix, attention_mask=torch.ones_like(prefix)).logits[:, -1]
    torch.testing.assert_close(out.logits[-1], full, rtol=1e-4, atol=1e-5)
    with model.disable_adapter():
        without = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert torch.equal(without, tiny_model(family, task="CAUSAL_LM").generate(**batch, max_new_tokens=5, do_sample=False))


@pytest.mark.parametrize("method", ["adp", "rep"])
@pytest.mark.parametrize("task", ["SEQ_CLS", "CAUSAL_LM", "SEQ_2_SEQ_LM"])
def test_adapter_config_json_loads_back_as_the_same_config(tmp_path, method, task):
    family = {"SEQ_CLS": "bert", "CAUSAL_LM": "llama", "SEQ_2_SEQ_LM": "t5"}[task]
    model = get_peft_model(tiny_model(family, task=task), METHODS[method](task, layers_to_transform=[1]))
    model.save_pretrained(tmp_path)
    on_disk = json.loads((tmp_path / "adapter_config.json").read_text())
    assert on_disk["peft_type"] == ("LORETTA_ADP" if method == "adp" else "LORETTA_REP")
    config_cls = LorettaAdpConfig if method == "adp" else LorettaRepConfig
    built = model.peft_config["default"].to_dict()
    for loaded in (PeftConfig.from_pretrained(tmp_path), config_cls.from_pretrained(tmp_path)):
        assert type(loaded) is config_cls
        assert {k: v for k, v in loaded.to_dict().items() if k != "inference_mode"} == \
               {k: v for k, v in built.items() if k != "inference_mode"}


@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_trainable_parameter_report_counts_what_trains(family, method, capsys):
    task = default_task(family)
    model = get_peft_model(tiny_model(family, task=task), METHODS[method](task))
    model.add_adapter("second", METHODS[method](task))
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == sum(p.numel() for p in model.parameters())
    model.print_trainable_parameters()
    assert f"trainable params: {trainable:,}" in capsys.readouterr().out


@pytest.mark.parametrize("make, message", [
    (lambda: LorettaAdpConfig(tensorized="no"), r"tensorized must be True or False, got 'no'"),
    (lambda: LorettaAdpConfig(trainable_layer_norms="false"), r"trainable_layer_norms must be True or False, got 'false'"),
    (lambda: LorettaRepConfig(tensorized_head=0), r"tensorized_head must be True or False, got 0"),
    (lambda: LorettaRepConfig(recompute_layer_norms=None), r"recompute_layer_norms must be True or False, got None"),
    (lambda: LorettaAdpConfig(scaling=True), r"scaling must be a finite number, got True"),
    (lambda: LorettaAdpConfig(scaling=float("nan")), r"scaling must be a finite number, got nan"),
    (lambda: LorettaRepConfig(lora_alpha=float("inf")), r"lora_alpha must be a finite number, got inf"),
    (lambda: LorettaRepConfig(layers_to_transform=[0], layers_pattern=5), r"layers_pattern must be None, a module list's name"),
])
def test_flags_and_numbers_of_the_wrong_kind_are_named(make, message):
    """A flag given as a string ("false", from a command line) was truthy and did the opposite of what it
    said; a NaN scaling made every output NaN at the first forward; a layers_pattern of another type
    failed deep inside PEFT's matching."""
    with pytest.raises(ValueError, match=message):
        make()
