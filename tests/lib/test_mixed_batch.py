"""Mixed-adapter batches: `model(**batch, adapter_names=[...])` runs each sample with its own adapter."""

import pytest
import torch
from peft.utils.other import ModulesToSaveWrapper

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model

from .tiny_models import default_task, tiny_batch, tiny_model

METHODS = {
    "adp": lambda task: LorettaAdpConfig(task_type=task, tensor_rank=3, bottleneck_size=8),
    "rep": lambda task: LorettaRepConfig(task_type=task, tensor_rank=3, r=4, lora_dropout=0.0),
}
NAMES = ["second", "__base__", "default", "second", "default"]


def _perturb_trainable(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _two_adapter_model(family, method):
    task = default_task(family)
    model = get_peft_model(tiny_model(family, task=task), METHODS[method](task))
    _perturb_trainable(model, seed=1)
    model.add_adapter("second", METHODS[method](task))
    model.set_adapter("second")
    _perturb_trainable(model, seed=2)  # only "second"'s cores, norms and head copies are trainable now
    model.set_adapter("default")
    return model.eval()


def _logits(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw).logits


def _each_adapter_alone(model, batch):
    expected = {}
    for name in ("default", "second"):
        model.set_adapter(name)
        expected[name] = _logits(model, batch)
    model.set_adapter("default")
    with model.disable_adapter():
        expected["__base__"] = _logits(model, batch)
    return expected


# qwen3_5_text: linear attention, whose gated norm takes the gate as a second input; deepseek_v3: latent attention;
# gemma4_text: a layer reusing another's keys and values
@pytest.mark.parametrize("family", ["bert", "roberta", "deberta", "deberta-v2", "mpnet", "distilbert", "modernbert",
                                    "llama", "gpt2", "opt", "gpt_neox", "phi3", "qwen3", "falcon", "mixtral", "t5",
                                    "bart", "qwen3_5_text", "deepseek_v3", "gemma4_text"])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_each_sample_gets_its_own_adapter_norms_and_head(family, method):
    model = _two_adapter_model(family, method)
    batch = tiny_batch(model, batch=len(NAMES))
    if (family, method) == ("deberta-v2", "rep"):
        # its query_proj also projects the relative-position table, one for the whole batch
        with pytest.raises(ValueError, match="received a batch of 1: this layer also acts on a tensor shared"):
            model(**batch, adapter_names=NAMES)
        return
    expected = _each_adapter_alone(model, batch)
    assert not torch.allclose(expected["default"], expected["second"])
    assert not torch.allclose(expected["default"], expected["__base__"])

    mixed = _logits(model, batch, adapter_names=NAMES)
    for row, name in enumerate(NAMES):
        torch.testing.assert_close(mixed[row], expected[name][row], rtol=1e-5, atol=1e-5)

    # the hooks are gone afterwards: a plain call runs the active adapter on every sample
    torch.testing.assert_close(_logits(model, batch), expected["default"])
    assert not any("_mixed_batch_forward" in vars(m) for m in model.modules() if isinstance(m, ModulesToSaveWrapper))


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("method", ["adp", "rep"])
@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_with_mixed_adapters_matches_each_adapter_alone(family, method, num_beams):
    model = _two_adapter_model(family, method)
    batch = tiny_batch(model, batch=len(NAMES), length=5)
    batch.pop("decoder_input_ids", None)  # generate() starts the decoder itself
    kw = dict(max_new_tokens=4, do_sample=False, num_beams=num_beams, pad_token_id=0)

    def generate(**extra):
        with torch.no_grad():
            return model.generate(**batch, **kw, **extra)

    expected = {}
    for name in ("default", "second"):
        model.set_adapter(name)
        expected[name] = generate()
    model.set_adapter("default")
    with model.disable_adapter():
        expected["__base__"] = generate()
    mixed = generate(adapter_names=NAMES)
    for row, name in enumerate(NAMES):
        assert torch.equal(mixed[row], expected[name][row]), (row, name)


def test_mixed_batch_errors_name_the_problem():
    model = _two_adapter_model("llama", "rep")
    batch = tiny_batch(model, batch=2)
    with pytest.raises(ValueError, match=r"unknown adapters \['typo'\]; valid: \['default', 'second', '__base__'\]"):
        model(**batch, adapter_names=["default", "typo"])
    with pytest.raises(ValueError, match="adapter_names has 3 entries but the batch has 2 samples"):
        model(**batch, adapter_names=["default", "second", "default"])
    with pytest.raises(TypeError, match="list of adapter names, one per sample"):
        model(**batch, adapter_names="default")
    model.train()
    with pytest.raises(ValueError, match=r"for inference: call model.eval\(\)"):
        model(**batch, adapter_names=["default", "second"])
    model.eval()
    model.merge_adapter()
    with pytest.raises(ValueError, match="while adapters are merged"):
        model(**batch, adapter_names=["default", "second"])
    model.unmerge_adapter()
    model(**batch, adapter_names=["default", "second"])  # fine again


def test_a_trained_module_applied_to_a_shared_parameter_refuses_mixed_batches():
    # DeBERTa-v2's norm of the relative-position table is frozen by default; trained on request, one
    # result would have to serve samples of different adapters
    config = lambda: LorettaAdpConfig(task_type="SEQ_CLS", tensor_rank=3, bottleneck_size=8,  # noqa: E731
                                      modules_to_save=["encoder.LayerNorm"])
    model = get_peft_model(tiny_model("deberta-v2"), config())
    model.add_adapter("second", config())
    model.eval()
    batch = tiny_batch(model, batch=len(NAMES))
    with pytest.raises(ValueError, match=r"LayerNorm is applied to a parameter of shape \(32, 64\) shared by all"):
        model(**batch, adapter_names=NAMES)
