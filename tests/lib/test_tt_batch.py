"""TT layers of one structure rebuild their matrices together, once per model forward (tt_batch.py)."""

import copy

import pytest
import torch

from loretta import LorettaAdpConfig, LorettaRepConfig, LorettaRepLayer, TTLinear, get_peft_model
from loretta.layer_base import LorettaLayerBase
from loretta.tt_batch import rebuild_together

from .tiny_models import tiny_batch, tiny_model

METHODS = {
    # on a CPU, LoRETTA_adp's projections multiply by their factors ("auto"); on a GPU by the matrix
    "adp": lambda **kw: LorettaAdpConfig(task_type="CAUSAL_LM", tensor_rank=3, bottleneck_size=8, **kw),
    "adp_matrix": lambda **kw: LorettaAdpConfig(task_type="CAUSAL_LM", tensor_rank=3, bottleneck_size=8,
                                                tt_forward="matrix", **kw),
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


def _rebuild_each_layer_alone(model):
    """No rebuilding together from now on, and nothing held: each layer builds its own (the reference)."""
    for handle in _hook(model):
        handle.remove()
    for module in model.modules():
        if isinstance(module, TTLinear):
            module._held = None
        if isinstance(module, LorettaRepLayer):
            module._held_factors.clear()


def _prefill(model, batch):
    """A KV cache of the batch (as generate's first forward makes it), as the keyword argument it goes by."""
    output = model(**batch, use_cache=True)
    name = "cache" if "cache" in output else "past_key_values"  # transformers 5.24's name, and 5.0's
    return {name: output[name]}


def _decode(model, cache, token=3):
    """One new token on a copy of `cache`: a decoding step of generate, the only forward that reuses what an
    earlier one built (repeatable: the cache itself stays as it was)."""
    batch = next(iter(cache.values())).layers[0].keys.shape[0]
    return model(input_ids=torch.full((batch, 1), token), **copy.deepcopy(cache), use_cache=True).logits


def _held(tt):
    """What `tt` holds for its forward (matrix or factors), if still valid."""
    held = tt._valid_held("factors" if tt.multiplies_by_factors(tt.cores[0].device) else "matrix")
    return None if held is None else held[0]


def test_adapter_projections_multiply_by_factors_on_a_cpu_unless_told_otherwise():
    layers = lambda model: [m for m in model.modules() if isinstance(m, TTLinear)]  # noqa: E731
    cpu = torch.device("cpu")
    assert all(tt.multiplies_by_factors(cpu) for tt in layers(_model("adp")))
    assert not any(tt.multiplies_by_factors(cpu) for tt in layers(_model("adp_matrix")))
    assert not any(tt.multiplies_by_factors(cpu) for tt in layers(_model("rep")))  # rep's A, B are matrices
    assert not any(tt.multiplies_by_factors(torch.device("cuda")) for tt in layers(_model("adp")))


@pytest.mark.parametrize("method", ["adp", "adp_matrix", "rep"])
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
            lambda module, args: served.extend(_held(tt) is not None for tt in module.active_tt_layers()))
    together = _loss_and_grads(model, batch)
    assert served and all(served)  # every TT layer served a matrix (or factors) rebuilt with the others
    if dtype != torch.float32 and method != "rep":
        held_casts = [tt._held[2] for tt in model.modules() if isinstance(tt, TTLinear)]
        cast_dtypes = [[t.dtype for t in (cast[1] if isinstance(cast[1], tuple) else [cast[1]])] for cast in held_casts]
        assert all(cast[0] == dtype for cast in held_casts) and all(d == dtype for ds in cast_dtypes for d in ds)

    if method == "rep":  # and its layers' concatenated, scaled factors were put together too
        rep_layers = [m for m in model.modules() if isinstance(m, LorettaRepLayer)]
        assert all(layer._valid_held_factors("default") is not None for layer in rep_layers)
        if dtype != torch.float32:
            assert all(layer._held_factors["default"][1].dtype == dtype for layer in rep_layers)

    _rebuild_each_layer_alone(model)
    alone = _loss_and_grads(model, batch)
    # the same products on the same values, stacked: the same numbers
    torch.testing.assert_close(together[0], alone[0], rtol=0, atol=0)
    assert together[1].keys() == alone[1].keys()
    for name in alone[1]:
        torch.testing.assert_close(together[1][name], alone[1][name], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["adp", "adp_matrix"])
def test_noise_reduction_still_leaves_the_output_unchanged_at_step_0(method):
    base = tiny_model("llama", task="CAUSAL_LM", num_hidden_layers=3)
    batch = tiny_batch(base)
    with torch.no_grad():
        before = base(**batch).logits
    model = get_peft_model(base, METHODS[method](trainable_layer_norms=False))
    layers = [m for m in model.modules() if isinstance(m, TTLinear) and m.initial_cores is not None]
    rebuild_together(layers)
    assert all(torch.count_nonzero(m.weight_matrix()) == 0 for m in layers)  # exactly 0, not just small
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["adp", "adp_matrix"])
def test_held_operands_are_not_used_once_the_cores_change_or_a_graph_is_wanted(method):
    model = _model(method)
    layers = [m for m in model.modules() if isinstance(m, TTLinear)]
    with torch.no_grad():
        rebuild_together(layers)
    layer = next(m for m in layers if m.initial_cores is not None)  # an up projection: W = TT - TT0
    assert _held(layer) is None  # built without a graph, asked for with one
    rebuild_together(layers)
    held = _held(layer)
    assert held is not None and (held if method == "adp_matrix" else held[0]).grad_fn is not None
    with torch.no_grad():
        layer.cores[0].mul_(2)  # what an optimizer step does
    assert _held(layer) is None
    torch.testing.assert_close(layer.weight_matrix(), layer.raw_matrix() - layer.initial_matrix())
    left_t, right = layer.factors()
    torch.testing.assert_close(left_t.t() @ right, layer.weight_matrix())


def test_gradient_accumulation_copies_and_unloading():
    model = _model("rep")
    batch = tiny_batch(model)
    for _ in range(2):  # two forwards and backwards without an optimizer step in between
        model(**batch, labels=batch["input_ids"]).loss.backward()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(clone(**batch).logits, model(**batch).logits)
    unloaded = model.merge_and_unload()
    assert not hasattr(unloaded, "_loretta_rebuild_hook")
    assert not unloaded._forward_pre_hooks and not unloaded._forward_hooks


def test_rep_factors_put_together_give_way_when_the_cores_change_or_a_graph_is_wanted():
    from loretta.tt_batch import rebuild_before_forward

    model = _model("rep")
    layer = next(m for m in model.modules() if isinstance(m, LorettaRepLayer))
    with torch.no_grad():
        rebuild_before_forward(model.base_model.model, ())
    assert layer._held_factors and layer._valid_held_factors("default") is None  # no graph, one is wanted
    rebuild_before_forward(model.base_model.model, ())
    dtype, a_t, b_scaled = layer._valid_held_factors("default")
    own_a_t, own_b = layer._factors("default")
    torch.testing.assert_close(a_t, own_a_t, rtol=0, atol=0)
    torch.testing.assert_close(b_scaled, own_b * layer.scaling["default"], rtol=0, atol=0)
    assert copy.deepcopy(layer)._held_factors == {}  # a copy builds its own (held ones carry a graph)
    with torch.no_grad():
        layer.loretta_rep_B["default"].cores[0].mul_(2)  # what an optimizer step does
    assert layer._valid_held_factors("default") is None


def _record_calls(monkeypatch, cls, name: str) -> list:
    """The instances `cls.name` is called on from now on (the method still runs)."""
    calls, method = [], getattr(cls, name)
    monkeypatch.setattr(cls, name, lambda self: calls.append(self) or method(self))
    return calls


def _held_objects(model):
    tts = [id(m._held[1]) for m in model.modules() if isinstance(m, TTLinear) and m._held is not None]
    reps = [id(held[1]) for m in model.modules() if isinstance(m, LorettaRepLayer) for held in m._held_factors.values()]
    return tts, reps


@pytest.mark.parametrize("method", ["adp", "adp_matrix", "rep"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoding_steps_reuse_what_is_held_until_the_cores_change(method, dtype):
    """Each new token of generate() rebuilds nothing while the cores stay as they are."""
    model = _model(method, dtype=dtype).eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        cache = _prefill(model, batch)
        held = _held_objects(model)
        assert held[0] and (method != "rep" or held[1])
        first = _decode(model, cache)
        assert _held_objects(model) == held  # the same tensors served the decoding step
        torch.testing.assert_close(_decode(model, cache), first, rtol=0, atol=0)
        assert _held_objects(model) == held
        tt = next(m for m in model.modules() if isinstance(m, TTLinear))
        tt.cores[0].mul_(2)  # an optimizer step
        changed = _decode(model, cache)
        assert _held_objects(model) != held and not torch.equal(changed, first)
    # the same numbers as a model that rebuilds every layer on its own
    _rebuild_each_layer_alone(model)
    with torch.no_grad():
        torch.testing.assert_close(_decode(model, cache), changed, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["adp", "adp_matrix", "rep"])
def test_any_forward_but_a_decoding_step_sees_weights_changed_through_data(method):
    """A change through `.data` (an EMA swap, DeepSpeed's copy from its master weights) leaves the tensors'
    version counters as they were, which is all a held matrix's check can see: every forward that does not
    continue a KV cache rebuilds (an evaluation batch, each generate() call), so the change counts from the
    next one; before 2026-12-01 evaluation kept using the matrices built before it."""
    model = _model(method).eval()
    batch = tiny_batch(model)
    prompt = batch["input_ids"][:1]
    with torch.no_grad():
        model(**batch)
        model.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)
        for p in model.parameters():
            if p.requires_grad:
                p.data.add_(0.1)  # no version bump
        evaluated = model(**batch).logits
        generated = model.generate(input_ids=prompt, max_new_tokens=3, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True)
    reference = copy.deepcopy(model)  # holds nothing: builds from the cores as they are
    _rebuild_each_layer_alone(reference)
    with torch.no_grad():
        torch.testing.assert_close(evaluated, reference(**batch).logits, rtol=0, atol=0)
        expected = reference.generate(input_ids=prompt, max_new_tokens=3, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True)
    torch.testing.assert_close(generated.logits, expected.logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_a_forward_that_wants_a_graph_rebuilds_even_when_nothing_changed(method):
    model = _model(method)
    batch = tiny_batch(model)
    with torch.no_grad():
        model(**batch)
    held = _held_objects(model)
    for _ in range(2):  # two training forwards and backwards: each needs a graph of its own
        model(**batch, labels=batch["input_ids"]).loss.backward()
        assert _held_objects(model) != held
        held = _held_objects(model)


def test_changing_rep_scaling_is_seen_by_the_next_forward_without_a_graph():
    model = _model("rep").eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        first = model(**batch).logits
        for layer in (m for m in model.modules() if isinstance(m, LorettaRepLayer)):
            layer.scaling["default"] *= 2
        doubled = model(**batch).logits
        for layer in (m for m in model.modules() if isinstance(m, LorettaRepLayer)):
            layer.scaling["default"] /= 2
        torch.testing.assert_close(model(**batch).logits, first, rtol=0, atol=0)
    assert not torch.allclose(doubled, first)


def _tuner_layer_and_input(model):
    layer = next(m for m in model.modules() if isinstance(m, LorettaLayerBase))
    return layer, torch.randn(2, 3, layer.in_features)


@pytest.mark.parametrize("method", ["adp", "adp_matrix", "rep"])
@pytest.mark.parametrize("forward_raises", [False, True])
def test_a_layer_called_on_its_own_after_a_model_forward_checks_its_cores_again(method, forward_raises):
    """Inside a forward without a graph each layer trusts what the model's pre-hook checked; once the
    forward is over (or has raised), a layer called on its own sees cores changed in between."""
    model = _model(method).eval()
    batch = tiny_batch(model)
    layer, x = _tuner_layer_and_input(model)
    with torch.no_grad():
        if forward_raises:
            with pytest.raises(IndexError):  # a token id past the vocabulary: after the pre-hook ran
                model(input_ids=batch["input_ids"] + model.config.vocab_size)
        else:
            model(**batch)
        for tt in layer.active_tt_layers():
            tt.cores[0].mul_(2)  # an optimizer step between the forward and this call
        out = layer(x)
    _rebuild_each_layer_alone(model)
    with torch.no_grad():
        torch.testing.assert_close(out, layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_a_decoding_step_checks_each_held_operand_once(method, monkeypatch):
    """Each token of generate() checks each TT layer's held matrix or factors against its cores in the
    model's pre-hook only, not again in the layer's own forward (Python time that a decode step of a
    small model feels)."""
    model = _model(method).eval()
    batch = tiny_batch(model)
    calls = _record_calls(monkeypatch, TTLinear, "_state_key")
    with torch.no_grad():
        cache = _prefill(model, batch)  # builds what is held
        calls.clear()
        _decode(model, cache)
    tt_layers = [m for m in model.modules() if isinstance(m, TTLinear)]
    assert sorted(map(id, calls)) == sorted(map(id, tt_layers))  # each once (rep: with its held factors)


@pytest.mark.parametrize("method", ["adp", "adp_matrix", "rep"])
def test_inference_mode_then_training_then_inference_mode_again(method):
    """What is held or cached under torch.inference_mode (pipelines generate under it) is made of
    inference tensors, which autograd cannot use: training afterwards rebuilds, and the next
    evaluation sees the trained cores."""
    model = _model(method).eval()
    batch = tiny_batch(model)
    with torch.inference_mode():
        first = model(**batch).logits
        model.generate(input_ids=batch["input_ids"][:1], max_new_tokens=3, do_sample=False)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, first, rtol=0, atol=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.inference_mode():
        trained = model(**batch).logits
    _rebuild_each_layer_alone(model)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, trained, rtol=0, atol=0)
    assert not torch.equal(trained, first)


def _two_adapters(method):
    """_model(method) with a second adapter "other", its parameters perturbed as the first's."""
    model = _model(method).eval()
    model.add_adapter("other", METHODS[method]())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".other." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _reference_logits(model, cache, adapter):
    """The logits of `adapter` alone in a decoding step on `cache`, from a copy where every layer rebuilds its
    own."""
    reference = copy.deepcopy(model)
    reference.set_adapter(adapter)
    _rebuild_each_layer_alone(reference)
    with torch.no_grad():
        return _decode(reference, cache)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_decoding_steps_follow_adapter_switches_and_disabling(method):
    """Each token of generate() reuses the last such forward's list of layers to check; switching,
    disabling or adding adapters makes the next one work it out again."""
    model = _two_adapters(method)
    batch = tiny_batch(model)
    with torch.no_grad():
        cache = _prefill(model, batch)
    expected = {name: _reference_logits(model, cache, name) for name in ("default", "other")}
    with torch.no_grad():
        for name in ("default", "other", "other", "default"):
            model.set_adapter(name)
            torch.testing.assert_close(_decode(model, cache), expected[name], rtol=0, atol=0)
            active = [tt for module in model.modules() if isinstance(module, LorettaLayerBase)
                      for tt in module.active_tt_layers()]
            assert active and all(tt._held is not None for tt in active)  # rebuilt together, not each alone
        with model.disable_adapter():
            base = _decode(model, cache)
        torch.testing.assert_close(_decode(model, cache), expected["default"], rtol=0, atol=0)
        with model.disable_adapter():
            torch.testing.assert_close(_decode(model, cache), base, rtol=0, atol=0)
    assert not torch.equal(base, expected["default"])


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_a_stale_list_of_layers_costs_time_not_correctness(method, monkeypatch):
    """Were a change of adapters ever missed (the remembered list kept), the layers it does not list
    check their own held operands: the outputs stay right."""
    from loretta import tt_batch

    model = _two_adapters(method)
    batch = tiny_batch(model)
    with torch.no_grad():
        cache = _prefill(model, batch)
    expected = _reference_logits(model, cache, "other")
    monkeypatch.setattr(tt_batch, "_adapter_flags", lambda modules: "never changes")
    with torch.no_grad():
        _decode(model, cache)  # remembers the "default" adapter's layers
        model.set_adapter("other")
        torch.testing.assert_close(_decode(model, cache), expected, rtol=0, atol=0)
        torch.testing.assert_close(_decode(model, cache), expected, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_steady_decoding_steps_do_not_work_out_the_active_layers_again(method, monkeypatch):
    model = _model(method).eval()
    batch = tiny_batch(model)
    calls = _record_calls(monkeypatch, LorettaLayerBase, "active_tt_layers")
    with torch.no_grad():
        cache = _prefill(model, batch)
        assert calls
        calls.clear()
        _decode(model, cache)
        _decode(model, cache)
        assert calls == []
        for tt in (m for m in model.modules() if isinstance(m, TTLinear)):
            tt.cores[0].mul_(1.5)  # an optimizer step: the next forward rebuilds, working them out again
        _decode(model, cache)
        assert calls
        calls.clear()
        model(**batch)  # not a decoding step: rebuilds whatever changed, through .data too
        assert calls
