"""Trainable norms recomputed in the backward pass: same gradients, less saved memory, stock model after unload."""

import copy
import pickle

import pytest
import torch

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model
from loretta.norm_recompute import RecomputingNormForward

from .tiny_models import FAMILIES, SEQ2SEQ, default_task, tiny_batch, tiny_model

METHODS = {
    "adp": lambda task, **kw: LorettaAdpConfig(task_type=task, tensor_rank=3, bottleneck_size=8, init_method="gaussian", **kw),
    "rep": lambda task, **kw: LorettaRepConfig(task_type=task, tensor_rank=3, r=4, lora_dropout=0.0, init_method="gaussian", **kw),
}


# families whose norms are torch's fused nn.LayerNorm: nothing to gain, so nothing is recomputed
FUSED_NORM_FAMILIES = {"bert", "roberta", "deberta-v2", "mpnet", "distilbert", "modernbert", "opt", "gpt2", "gpt_neox",
                       "falcon", "bart"}


def _loss_and_grads(family, method, recompute, autocast_dtype=None):
    task = default_task(family)
    torch.manual_seed(0)  # the same Gaussian cores and head for both runs
    model = get_peft_model(tiny_model(family, task=task), METHODS[method](task, recompute_layer_norms=recompute))
    model.train()
    batch = tiny_batch(model)
    labels = torch.tensor([0, 1]) if task == "SEQ_CLS" else batch["input_ids"]
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        loss = model(**batch, labels=labels).loss
    loss.backward()
    return model, loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


# and the norms of linear attention (a gated one, which keeps its own forward), latent attention, Gemma 4
@pytest.mark.parametrize("family", FAMILIES + SEQ2SEQ + ["qwen3_5_text", "deepseek_v3", "gemma4_text"])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_recomputed_norms_give_the_same_loss_and_gradients(family, method):
    plain_model, plain_loss, plain = _loss_and_grads(family, method, recompute=False)
    model, loss, grads = _loss_and_grads(family, method, recompute=True)
    patched = [n for n, m in model.named_modules()
               if isinstance(m.__dict__.get("forward"), RecomputingNormForward) and ".modules_to_save." in n]
    assert bool(patched) == (family not in FUSED_NORM_FAMILIES), f"{family}: patched {patched}"
    assert not any(isinstance(m.__dict__.get("forward"), RecomputingNormForward) for m in plain_model.modules())
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    assert grads.keys() == plain.keys()
    norm_grads = [n for n in grads if n.rpartition(".")[0] in patched and grads[n] is not None]
    assert bool(norm_grads) == bool(patched), f"{family}: no recomputed norm received a gradient"
    for name in grads:
        assert grads[name] is not None, name
        # float32 rounding, on the gradient's own scale: the recomputed norm's kernels may sum in another order
        # (Gemma 4's adapter bias on this Intel CPU: 3.1e-6 apart in a gradient of 3.66)
        scale = max(1.0, plain[name].abs().max().item())
        torch.testing.assert_close(grads[name], plain[name], rtol=1e-5, atol=2e-6 * scale, msg=name)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_recompute_under_bf16_autocast_matches(method):
    _, plain_loss, plain = _loss_and_grads("llama", method, recompute=False, autocast_dtype=torch.bfloat16)
    _, loss, grads = _loss_and_grads("llama", method, recompute=True, autocast_dtype=torch.bfloat16)
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    for name in grads:
        torch.testing.assert_close(grads[name], plain[name], rtol=1e-3, atol=1e-5, msg=name)


def _saved_for_backward_bytes(model, batch, labels):
    return _saved_for_backward_bytes_of(lambda: model(**batch, labels=labels).loss, model)


@pytest.mark.parametrize("family", ["deberta", "llama"])
def test_recomputed_norms_save_less_for_backward(family):
    task = default_task(family)
    sizes = {}
    for recompute in (False, True):
        model = get_peft_model(tiny_model(family, task=task), METHODS["adp"](task, recompute_layer_norms=recompute))
        batch = tiny_batch(model, batch=4, length=16)
        labels = batch["input_ids"] if task == "CAUSAL_LM" else torch.tensor([0, 1, 0, 1])
        sizes[recompute] = _saved_for_backward_bytes(model.train(), batch, labels)
    assert sizes[True] < sizes[False]


def test_fused_layer_norms_are_not_recomputed_since_training_them_saves_nothing_more():
    """torch's nn.LayerNorm keeps the same tensors for backward whether its weight trains or not (unlike
    RMSNorm written in Python, which keeps one more): recomputing it would only add a kernel per norm."""
    from loretta.norm_recompute import saves_memory_when_recomputed

    x = torch.randn(4, 16, 64, requires_grad=True)
    for norm, gains in ((torch.nn.LayerNorm(64), False), (torch.nn.RMSNorm(64), True)):
        saved = {}
        for trains in (False, True):
            norm.requires_grad_(trains)
            saved[trains] = _saved_for_backward_bytes_of(lambda: norm(x), norm)
        assert (saved[True] > saved[False]) == gains == saves_memory_when_recomputed(norm), type(norm).__name__
    model = get_peft_model(tiny_model("roberta"), METHODS["adp"]("SEQ_CLS"))
    trained = [m for n, m in model.named_modules() if n.endswith("LayerNorm.modules_to_save.default")]
    assert trained and not any(isinstance(m.__dict__.get("forward"), RecomputingNormForward) for m in trained)


def _saved_for_backward_bytes_of(forward, module) -> int:
    seen, total = set(), 0
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return total


def test_frozen_originals_disable_adapter_and_inference_run_the_plain_forward():
    base = tiny_model("llama", task="CAUSAL_LM")
    batch = tiny_batch(base)
    with torch.no_grad():
        before = base(**batch).logits
    model = get_peft_model(base, METHODS["rep"]("CAUSAL_LM"))
    with model.disable_adapter(), torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before)
    # the trained copies are patched, the originals too, but a frozen norm never enters the recompute path
    norm = next(m for n, m in model.named_modules() if n.endswith("input_layernorm.modules_to_save.default"))
    assert isinstance(norm.__dict__.get("forward"), RecomputingNormForward)
    assert norm.forward.module is norm


def test_copies_and_pickles_rebind_to_their_module():
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS["adp"]("CAUSAL_LM"))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        for module in clone.modules():
            patch = module.__dict__.get("forward")
            if isinstance(patch, RecomputingNormForward):
                assert patch.module is module


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_unload_leaves_no_patch(method):
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS[method]("CAUSAL_LM"))
    plain = model.unload()
    assert not any("forward" in m.__dict__ for m in plain.modules())


def test_flag_off_or_frozen_norms_patch_nothing():
    for kw in ({"recompute_layer_norms": False}, {"trainable_layer_norms": False}):
        model = get_peft_model(tiny_model("deberta"), METHODS["adp"]("SEQ_CLS", **kw))
        assert not any(isinstance(m.__dict__.get("forward"), RecomputingNormForward) for m in model.modules())


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_recompute_inside_gradient_checkpointing_matches(method):
    def grads(recompute):
        torch.manual_seed(0)
        base = tiny_model("llama", task="CAUSAL_LM")
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(base, METHODS[method]("CAUSAL_LM", recompute_layer_norms=recompute)).train()
        batch = tiny_batch(model)
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, recomputed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_recompute_runs_on_the_meta_device(method):
    """Shape and FLOP dry runs on the meta device (which has no autocast) go through the recompute."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS[method]("CAUSAL_LM"))
    model.train()
    ids = torch.zeros(2, 8, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as flops:
        model(input_ids=ids, labels=ids).loss.backward()
    norms = [p for n, p in model.named_parameters() if p.requires_grad and "norm" in n]
    assert norms and all(p.grad is not None and p.grad.device.type == "meta" for p in norms)
    assert flops.get_total_flops() > 0
