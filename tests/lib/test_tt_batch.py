"""TT layers of one structure rebuild their matrices together, once per model forward (tt_batch.py)."""

import copy

import pytest
import torch

from loretta import LorettaAdpConfig, LorettaRepConfig, TTLinear, get_peft_model
from loretta.layer_base import LorettaLayerBase
from loretta.tt_batch import rebuild_together

from .tiny_models import tiny_batch, tiny_model

METHODS = {
    "adp": lambda **kw: LorettaAdpConfig(task_type="CAUSAL_LM", tensor_rank=3, bottleneck_size=8, **kw),
    "rep": lambda **kw: LorettaRepConfig(task_type="CAUSAL_LM", tensor_rank=3, r=4, lora_dropout=0.0, **kw),
}


def _model(method, dtype=torch.float32, **kw):
    base = tiny_model("llama", task="CAUSAL_LM", num_hidden_layers=3).to(dtype)
    model = get_peft_model(base, METHODS[method](**kw))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking cores: every matrix nonzero and different
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _loss_and_grads(model, batch):
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _hook(model):
    return model.base_model.model._loretta_rebuild_hook


@pytest.mark.parametrize("method", ["adp", "rep"])
@pytest.mark.parametrize("init, checkpointing, dtype", [("noise_reduction", False, torch.float32),
                                                        ("gaussian", False, torch.float32),
                                                        ("noise_reduction", True, torch.float32),
                                                        ("noise_reduction", False, torch.bfloat16)])
def test_rebuilding_together_gives_each_layers_own_output_and_gradients(method, init, checkpointing, dtype):
    """bf16 base: the fp32 matrices (and biases) are also cast to bf16 together, once."""
    model = _model(method, dtype=dtype, init_method=init)
    if checkpointing:  # the recomputed layers must see the matrices the forward used
        model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # transformers checkpoints only in training mode (the tiny llama has no dropout)
    batch = tiny_batch(model)
    served = []
    for layer in (m for m in model.modules() if isinstance(m, LorettaLayerBase)):
        layer.register_forward_pre_hook(
            lambda module, args: served.extend(tt._held_matrix() is not None for tt in module.active_tt_layers()))
    together = _loss_and_grads(model, batch)
    assert served and all(served)  # every TT layer served a matrix rebuilt with the others
    if dtype != torch.float32 and method == "adp":
        held_casts = [tt._held[1] for tt in model.modules() if isinstance(tt, TTLinear)]
        assert all(cast is not None and cast[0] == dtype and cast[1].dtype == dtype for cast in held_casts)

    _hook(model).remove()
    for tt in (m for m in model.modules() if isinstance(m, TTLinear)):
        tt._held = None
    alone = _loss_and_grads(model, batch)
    torch.testing.assert_close(together[0], alone[0], rtol=1e-6, atol=1e-7)
    assert together[1].keys() == alone[1].keys()
    for name in alone[1]:
        torch.testing.assert_close(together[1][name], alone[1][name], rtol=1e-5, atol=1e-8)


def test_noise_reduction_still_leaves_the_output_unchanged_at_step_0():
    base = tiny_model("llama", task="CAUSAL_LM", num_hidden_layers=3)
    batch = tiny_batch(base)
    with torch.no_grad():
        before = base(**batch).logits
    model = get_peft_model(base, METHODS["adp"](trainable_layer_norms=False))
    layers = [m for m in model.modules() if isinstance(m, TTLinear) and m.initial_cores is not None]
    rebuild_together(layers)
    assert all(torch.count_nonzero(m.weight_matrix()) == 0 for m in layers)  # exactly 0, not just small
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, rtol=0, atol=0)


def test_a_held_matrix_is_not_used_once_the_cores_change_or_a_graph_is_wanted():
    model = _model("adp")
    layers = [m for m in model.modules() if isinstance(m, TTLinear)]
    with torch.no_grad():
        rebuild_together(layers)
    layer = next(m for m in layers if m.initial_cores is not None)  # an up projection: W = TT - TT0
    assert layer._held_matrix() is None  # built without a graph, asked for with one
    rebuild_together(layers)
    held = layer._held_matrix()
    assert held is not None and held.grad_fn is not None
    with torch.no_grad():
        layer.cores[0].mul_(2)  # what an optimizer step does
    assert layer._held_matrix() is None
    torch.testing.assert_close(layer.weight_matrix(), layer.raw_matrix() - layer.initial_matrix())


def test_gradient_accumulation_copies_and_unloading():
    model = _model("rep")
    batch = tiny_batch(model)
    for _ in range(2):  # two forwards and backwards without an optimizer step in between
        model(**batch, labels=batch["input_ids"]).loss.backward()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(clone(**batch).logits, model(**batch).logits)
    unloaded = model.merge_and_unload()
    assert not hasattr(unloaded, "_loretta_rebuild_hook") and not unloaded._forward_pre_hooks
