"""dtype handling: cores stay fp32; training under bf16 autocast and on a bf16 base model works on CPU."""

import pytest
import torch

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model

from .tiny_models import tiny_batch, tiny_model

CONFIGS = {
    "adp": lambda: LorettaAdpConfig(task_type="CAUSAL_LM", bottleneck_size=8, tensor_rank=3, init_method="gaussian"),
    "rep": lambda: LorettaRepConfig(task_type="CAUSAL_LM", r=4, tensor_rank=3, init_method="gaussian"),
}


def _core_dtypes(model):
    return {p.dtype for n, p in model.named_parameters() if "cores" in n}


def _train(model, steps, autocast_dtype=None):
    batch = tiny_batch(model, batch=4, length=12)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_bf16_base_model_keeps_fp32_cores_and_trains(method):
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM").to(torch.bfloat16), CONFIGS[method]())
    assert _core_dtypes(model) == {torch.float32}
    losses = _train(model, steps=8)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert _core_dtypes(model) == {torch.float32}


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_bf16_autocast_training_on_fp32_model(method):
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), CONFIGS[method]())
    losses = _train(model, steps=8, autocast_dtype=torch.bfloat16)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_adapter_matches_float64_reference(method):
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), CONFIGS[method]()).eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        out32 = model(**batch).logits
        out64 = model.double()(**batch).logits
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-4)
