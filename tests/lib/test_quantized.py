"""LoRETTA on a bitsandbytes-quantized base (QLoRA style), 4-bit and 8-bit, on the CPU."""

import warnings

import pytest
import torch
from peft import PeftModel, prepare_model_for_kbit_training
from peft.utils.integrations import dequantize_bnb_weight
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from loretta import LorettaAdpConfig, LorettaRepConfig, LorettaRepLayer, TTLinear, get_peft_model

from .tiny_models import tiny_batch, tiny_model

QUANTIZATION = {
    "4bit": lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_compute_dtype=torch.float32),
    "8bit": lambda: BitsAndBytesConfig(load_in_8bit=True),
}
QUANTIZED_LINEAR = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}
METHODS = {
    "adp": lambda: LorettaAdpConfig(task_type="CAUSAL_LM", tensor_rank=3, bottleneck_size=8),
    "rep": lambda: LorettaRepConfig(task_type="CAUSAL_LM", tensor_rank=3, r=4, lora_dropout=0.0),
}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", task="CAUSAL_LM").save_pretrained(path)
    return path


def _quantized(path, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 8-bit on the CPU: "inputs will be cast to float16"
        return AutoModelForCausalLM.from_pretrained(path, quantization_config=QUANTIZATION[kind](), device_map="cpu")


def _logits(model, batch):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(**batch).logits


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_trains_on_a_quantized_base_and_round_trips(llama_dir, tmp_path, kind, method):
    # the QLoRA recipe: prepare_model_for_kbit_training (fp32 norms, input grads, gradient checkpointing)
    model = get_peft_model(prepare_model_for_kbit_training(_quantized(llama_dir, kind)), METHODS[method]())
    targets = [m for m in model.modules() if type(m).__name__ == QUANTIZED_LINEAR[kind]]
    assert targets and all(not m.weight.requires_grad for m in targets)
    cores = [p for m in model.modules() if isinstance(m, TTLinear) for p in m.cores]
    assert cores and all(p.dtype == torch.float32 and p.requires_grad for p in cores)

    batch = tiny_batch(model, batch=4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(5):
            loss = model(**batch, labels=batch["input_ids"]).loss
            loss.backward()
            if step > 0:  # at step 0 adp's down factor has none: the up factor's update starts at zero
                assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in optimizer.param_groups[0]["params"])
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses

    model.eval()
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(_quantized(llama_dir, kind), tmp_path).eval()
    torch.testing.assert_close(_logits(loaded, batch), expected)


def _dense(layer):
    base = layer.get_base_layer()
    state = base.weight.quant_state if hasattr(base.weight, "quant_state") else base.state
    return dequantize_bnb_weight(base.weight, state=state).float()


def _one_step(weight, kind):
    """Largest rounding of one quantization, per row (8-bit) or block (4-bit)."""
    if kind == "8bit":  # levels absmax / 127 apart; bitsandbytes rounds to float16 first, so a whole step
        return weight.abs().amax(dim=1, keepdim=True) / 127 + 1e-6
    blocks = weight.reshape(-1, 64).abs().amax(dim=1, keepdim=True)  # NF4 in blocks of 64: half the widest gap
    return (blocks * 0.31 / 2 + 1e-6).expand(-1, 64).reshape(weight.shape)


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_rep_merges_into_a_quantized_base(llama_dir, kind):
    model = get_peft_model(_quantized(llama_dir, kind), METHODS["rep"]()).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    layers = [m for m in model.modules() if isinstance(m, LorettaRepLayer)]
    expected = {id(m): _dense(m) + m.get_delta_weight("default").detach() for m in layers}
    batch = tiny_batch(model, batch=4)

    with pytest.warns(UserWarning, match=f"merging into a {kind} quantized layer"):
        model.merge_adapter()
    for m in layers:
        assert type(m.get_base_layer().weight).__name__ == ("Params4bit" if kind == "4bit" else "Int8Params")
        error = (_dense(m) - expected[id(m)]).abs()
        assert (error <= _one_step(expected[id(m)], kind)).all(), error.max()
    merged = _logits(model, batch)

    unloaded = model.merge_and_unload()  # already merged: nothing is quantized again
    assert not any(isinstance(m, LorettaRepLayer) for m in unloaded.modules())
    assert any(type(m).__name__ == QUANTIZED_LINEAR[kind] for m in unloaded.modules())
    torch.testing.assert_close(_logits(unloaded, batch), merged)


def _packed(layer) -> bool:
    # bitsandbytes sets the attribute only where it packs (a CPU with AVX512-BF16); elsewhere reading it
    # raises AttributeError, as bitsandbytes' own getattr(..., False) calls expect
    return getattr(layer.weight.quant_state, "packing_format_for_cpu", False)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_a_4bit_base_trains_again_after_an_evaluation(llama_dir, method):
    # On CPUs with AVX512-BF16 bitsandbytes repacks 4-bit weights for inference at the first eval-mode
    # forward, after which its training path fails; here the base was even evaluated before wrapping
    from bitsandbytes.functional import has_avx512bf16

    base = _quantized(llama_dir, "4bit").eval()
    batch = tiny_batch(base, batch=2)
    never_evaluated = _logits(get_peft_model(_quantized(llama_dir, "4bit"), METHODS[method]()).eval(), batch)
    _logits(base, batch)
    layers = [m for m in base.modules() if type(m).__name__ == "Linear4bit"]
    assert any(_packed(m) for m in layers) == has_avx512bf16()

    model = get_peft_model(base, METHODS[method]())
    assert all(not m.support_avx512bf16_for_cpu and not _packed(m)
               for m in layers)
    # unpacked by bitsandbytes' own inverse: the same weights up to the bf16 rounding of the block
    # scales that the repacking made (noise-reduction init: the adapters add exactly 0 here)
    torch.testing.assert_close(_logits(model.eval(), batch), never_evaluated, rtol=0, atol=2e-2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):  # train, evaluate, train
            model.train()
            model(**batch, labels=batch["input_ids"]).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            model.eval()
            _logits(model, batch)
    assert not any(_packed(m) for m in layers)
