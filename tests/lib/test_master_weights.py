"""Modules trained whole (layer norms, classification heads) keep float32 master weights in a bf16 /
fp16 model: they train where bf16 would round every step away, and the forward is the one they had.

The reference for "the forward they had" is the same model with `autocast_adapter_dtype=False`
(PEFT's switch, which leaves those modules in the base dtype): the outputs must be bit-identical and
the gradients the same numbers, only the parameters' storage changes.
"""

import copy

import pytest
import torch
from peft import PeftModel

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model
from loretta.master_weights import CastingForward, compute_dtype

from .tiny_models import FAMILIES, tiny_batch, tiny_model

CONFIGS = {
    # dropout off: the two models compared must see the same computation
    "adp": lambda task, **kw: LorettaAdpConfig(task_type=task, bottleneck_size=8, **kw),
    "rep": lambda task, **kw: LorettaRepConfig(task_type=task, r=8, lora_dropout=0.0, **kw),
}


def _whole_trained(model):
    """name -> parameter for the trainable parameters of the modules PEFT trains whole."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad and ".modules_to_save." in n}


def _pair(family, method, task, dtype=torch.bfloat16, **config):
    """The same adapted model twice: with float32 masters (the default) and without."""
    base = tiny_model(family, task=task).to(dtype)
    torch.manual_seed(1)
    masters = get_peft_model(copy.deepcopy(base), CONFIGS[method](task, **config))
    torch.manual_seed(1)
    plain = get_peft_model(base, CONFIGS[method](task, **config), autocast_adapter_dtype=False)
    return masters.train(), plain.train()


def _loss_and_grads(model, batch):
    model.zero_grad()
    torch.manual_seed(2)  # the same dropout masks in both models
    out = model(**({"labels": batch["input_ids"]} | batch))
    out.loss.backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["adp", "rep"])
@pytest.mark.parametrize("family,task", [(f, "SEQ_CLS") for f in FAMILIES] + [("llama", "CAUSAL_LM"), ("gpt2", "CAUSAL_LM")])
def test_half_precision_model_trains_whole_modules_in_float32_with_the_forward_unchanged(family, method, task):
    masters, plain = _pair(family, method, task)
    whole = _whole_trained(masters)
    assert whole, "the norms and the head are trained whole"
    assert {p.dtype for p in whole.values()} == {torch.float32}
    assert torch.bfloat16 in {p.dtype for p in _whole_trained(plain).values()}  # (a tensorized head's cores: fp32)
    batch = tiny_batch(masters)
    if task == "SEQ_CLS":
        batch["labels"] = torch.tensor([0, 1])
    out, grads = _loss_and_grads(masters, batch)
    plain_out, plain_grads = _loss_and_grads(plain, batch)
    # the same forward, in the same dtype, to the bit
    assert out.logits.dtype == plain_out.logits.dtype == torch.bfloat16
    assert torch.equal(out.logits, plain_out.logits)
    assert torch.equal(out.loss, plain_out.loss)
    # and the same gradients, held in float32 for the masters
    assert grads.keys() == plain_grads.keys()
    for name in whole:
        assert grads[name].dtype == torch.float32, name
        assert torch.equal(grads[name], plain_grads[name].float()), name


@pytest.mark.parametrize("method", ["adp", "rep"])
@pytest.mark.parametrize("family", ["llama", "bert"])  # recomputed RMSNorm / fused nn.LayerNorm
def test_bf16_layer_norms_move_under_adamw_only_with_masters(family, method):
    # the failure this prevents: norm weights near 1.0 never change in bf16 at lr 1e-3
    moved = {}
    for name, model in zip(("masters", "plain"), _pair(family, method, "CAUSAL_LM" if family == "llama" else "SEQ_CLS")):
        norms = {n: p for n, p in _whole_trained(model).items() if "norm" in n.lower() and n.endswith("weight")}
        before = {n: p.detach().float().clone() for n, p in norms.items()}
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        batch = tiny_batch(model)
        if family == "bert":
            batch["labels"] = torch.tensor([0, 1])
        for _ in range(3):
            _loss_and_grads(model, batch)
            opt.step()
        moved[name] = sum(not torch.equal(before[n], p.detach().float()) for n, p in norms.items()) / len(norms)
    assert moved["masters"] == 1.0
    if family == "llama":  # weights exactly 1.0: bf16's spacing there (2^-7) swallows AdamW's ~1e-3 steps
        assert moved["plain"] == 0.0


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_masters_save_load_and_unload_to_a_stock_half_precision_model(method, tmp_path):
    masters, _ = _pair("llama", method, "SEQ_CLS")
    batch = tiny_batch(masters)
    opt = torch.optim.AdamW([p for p in masters.parameters() if p.requires_grad], lr=1e-2)
    masters(**batch, labels=torch.tensor([0, 1])).loss.backward()
    opt.step()
    masters.eval()
    with torch.no_grad():
        expected = masters(**batch).logits
    masters.save_pretrained(tmp_path)

    loaded = PeftModel.from_pretrained(tiny_model("llama").to(torch.bfloat16), tmp_path).eval()
    trained = _whole_trained(masters)
    for name, param in loaded.named_parameters():
        if name in trained:
            assert param.dtype == torch.float32 and torch.equal(param, trained[name]), name
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)

    merged = loaded.merge_and_unload() if method == "rep" else loaded.unload()
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    assert not any(compute_dtype(m) or "forward" in m.__dict__ for m in merged.modules())
    # the unloaded modules hold the trained values, in the model's dtype
    stock = dict(merged.named_parameters())
    for name, param in trained.items():
        plain_name = name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
        if plain_name in stock:  # (a tensorized head's cores became one dense weight)
            assert torch.equal(stock[plain_name], param.detach().to(torch.bfloat16)), name
    if method == "rep":  # everything merged: the same function, up to bf16 rounding of the merged weights
        with torch.no_grad():
            torch.testing.assert_close(merged(**batch).logits, expected, rtol=0.05, atol=0.05)


def test_switched_off_by_autocast_adapter_dtype_false_and_inactive_on_float32_models():
    _, plain = _pair("llama", "adp", "SEQ_CLS")
    fp32 = get_peft_model(tiny_model("llama"), CONFIGS["adp"]("SEQ_CLS"))
    for model in (plain, fp32):
        assert not any(isinstance(m.__dict__.get("forward"), CastingForward) or compute_dtype(m) for m in model.modules())


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_a_second_adapter_gets_its_own_masters_and_mixed_batches_run_each_in_bf16(method):
    masters, _ = _pair("llama", method, "SEQ_CLS")
    masters.add_adapter("other", CONFIGS[method]("SEQ_CLS"))
    wrapper = masters.base_model.model.model.norm
    assert wrapper.original_module.weight.dtype == torch.bfloat16
    x = torch.randn(2, 8, 64, dtype=torch.bfloat16)
    for name in ("default", "other"):  # adding one adapter leaves the other's copies as they were
        copy_ = wrapper.modules_to_save[name]
        assert copy_.weight.dtype == torch.float32 and copy_(x).dtype == torch.bfloat16, name
    with torch.no_grad():
        for param in _whole_trained(masters).values():
            param.add_(0.1 * torch.randn_like(param))  # adapters that differ
    masters.eval()
    batch = tiny_batch(masters, batch=3)
    with torch.no_grad():
        mixed = masters(**batch, adapter_names=["default", "other", "__base__"]).logits
        alone = []
        for name in ("default", "other"):
            masters.set_adapter(name)
            alone.append(masters(**batch).logits)
        with masters.disable_adapter():
            alone.append(masters(**batch).logits)
    for row, logits in enumerate(alone):
        assert torch.equal(mixed[row], logits[row]), row


def test_an_instance_forward_set_before_runs_inside_the_cast_and_is_given_back():
    from loretta.master_weights import keep_float32_masters, restore_dtypes

    layer = torch.nn.Linear(4, 3).to(torch.bfloat16)
    seen = []

    def hooked_forward(x):  # e.g. accelerate's device hook, which sets module.forward
        seen.append(layer.weight.dtype)
        return torch.nn.Linear.forward(layer, x)

    layer.forward = hooked_forward
    assert keep_float32_masters(layer) and not keep_float32_masters(layer)  # idempotent
    assert layer.weight.dtype == torch.float32
    out = layer(torch.ones(2, 4, dtype=torch.bfloat16))
    assert seen == [torch.bfloat16] and out.dtype == torch.bfloat16
    out.sum().backward()
    assert layer.weight.grad.dtype == torch.float32
    restore_dtypes(layer)
    assert layer.weight.dtype == torch.bfloat16 and layer.forward is hooked_forward and compute_dtype(layer) is None


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_fp16_model_steps_with_a_grad_scaler(method):
    # torch.amp.GradScaler (transformers' Trainer with fp16=True) refuses fp16 gradients: before the
    # masters, a LoRETTA fp16 model failed at its first step with "Attempting to unscale FP16 gradients"
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM").to(torch.float16), CONFIGS[method]("CAUSAL_LM"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in trainable} == {torch.float32}
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    batch = tiny_batch(model)
    before = [p.detach().clone() for p in trainable]
    loss = model(**batch, labels=batch["input_ids"]).loss
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert all(not torch.equal(b, p) for b, p in zip(before, trainable) if p.grad is not None and p.grad.any())


@pytest.mark.parametrize("method", ["adp", "rep"])
@pytest.mark.parametrize("family", ["bert", "opt"])
def test_bias_all_trains_the_base_biases_in_float32_with_the_forward_unchanged(family, method):
    masters, plain = _pair(family, method, "SEQ_CLS", bias="all")
    base = {n: p for n, p in masters.named_parameters()
            if not any(part in n for part in ("loretta_", ".modules_to_save.", ".original_module."))}
    assert any(n.endswith(".bias") and p.requires_grad for n, p in base.items()), "the base biases train in place"
    assert {p.dtype for p in masters.parameters() if p.requires_grad} == {torch.float32}
    # the weights beside them stay as they are
    assert {p.dtype for p in base.values() if not p.requires_grad} == {torch.bfloat16}
    batch = tiny_batch(masters) | {"labels": torch.tensor([0, 1])}
    out, grads = _loss_and_grads(masters, batch)
    plain_out, plain_grads = _loss_and_grads(plain, batch)
    assert torch.equal(out.logits, plain_out.logits)
    for name, grad in grads.items():
        assert torch.equal(grad, plain_grads[name].to(grad.dtype)), name
    unloaded = masters.unload()
    assert {p.dtype for p in unloaded.parameters()} == {torch.bfloat16}
    assert not any(compute_dtype(m) or "forward" in m.__dict__ for m in unloaded.modules())


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_masters_give_the_same_gradients_under_gradient_checkpointing(method):
    masters, _ = _pair("llama", method, "CAUSAL_LM")
    batch = tiny_batch(masters)
    _, grads = _loss_and_grads(masters, batch)
    grads = {n: g.clone() for n, g in grads.items()}
    masters.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _, checkpointed = _loss_and_grads(masters, batch)
    for name, grad in grads.items():
        assert torch.equal(checkpointed[name], grad), name


@pytest.mark.parametrize("method", ["adp", "rep"])
@pytest.mark.parametrize("family", ["bert", "roberta", "deberta"])
def test_a_half_precision_model_with_a_tensorized_head_unloads_to_one_that_runs(family, method):
    # the dense layer a TT head unloads to was float32 (the cores' dtype), and a bf16 model failed
    # with "mat1 and mat2 must have the same dtype" at its first forward after unload()
    masters, _ = _pair(family, method, "SEQ_CLS")
    batch = tiny_batch(masters)
    masters.eval()
    with torch.no_grad():
        expected = masters(**batch).logits
    unloaded = masters.merge_and_unload() if method == "rep" else masters.unload()
    assert {p.dtype for p in unloaded.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = unloaded(**batch).logits
    assert logits.dtype == torch.bfloat16
    if method == "rep":  # everything merged into the model: the same function, up to bf16 rounding
        torch.testing.assert_close(logits, expected, rtol=0.05, atol=0.05)
