"""LoRETTA_rep on mixture-of-experts' stacked expert weights (`target_parameters`, loretta/rep/experts.py)."""

import json

import pytest
import torch
import transformers
from peft import PeftModel

from loretta import LorettaRepConfig, LorettaRepLayer, get_peft_model, tt_num_params
from loretta.rep.experts import ParamWrapper
from loretta.tt_shapes import resolve_tt_shape

from .tiny_models import MOE_DECODERS, logits, perturb_trainable, tiny_batch, tiny_model

EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]


def _config(**kw):
    kw.setdefault("target_parameters", EXPERTS)
    return LorettaRepConfig(task_type="CAUSAL_LM", r=4, tensor_rank=3, lora_dropout=0.0, **kw)


def _wrappers(model):
    return [m for m in model.modules() if isinstance(m, ParamWrapper)]


def _perturb(model, seed=0):
    perturb_trainable(model, seed, scale=0.1)


def _expert_cores(model):
    return {n: p for n, p in model.named_parameters() if "loretta_rep" in n and p.ndim == 4}


def _expert_weights(model) -> set[str]:
    """The model's stacked expert weights, as target_parameters names them (what follows the layer index)."""
    return {f"{name}.{param_name}".split(".layers.", 1)[1].split(".", 1)[1]
            for name, module in model.named_modules() if not type(module).__module__.startswith("torch.nn")
            for param_name, param in module.named_parameters(recurse=False) if param.ndim == 3}


@pytest.mark.parametrize("model_type", MOE_DECODERS)
def test_every_expert_weight_trains_in_every_moe_family(model_type):
    torch.manual_seed(0)
    base = tiny_model(model_type, task="CAUSAL_LM")
    batch = tiny_batch(base)
    before = logits(base, batch)
    weights = _expert_weights(base)  # gate_up_proj and down_proj (GraniteMoE before transformers 5.1: other names)
    if not weights:  # the declared floor, transformers 5.0: AFMoE's experts are still linear layers
        pytest.skip(f"transformers {transformers.__version__}'s {model_type} has no stacked expert weights")
    assert len(weights) == 2, weights
    model = get_peft_model(base, _config(target_modules=[], target_parameters=sorted(weights)))
    assert {m.parameter_name for m in _wrappers(model)} == {w.rsplit(".", 1)[1] for w in weights}
    assert not any(isinstance(m, LorettaRepLayer) for m in model.modules())  # target_modules=[]: the experts alone
    torch.testing.assert_close(logits(model, batch), before, rtol=0, atol=1e-5)  # noise reduction: unchanged
    _perturb(model)
    model.train()(**batch, labels=batch["input_ids"]).loss.backward()
    cores = _expert_cores(model)
    assert cores and all(p.grad is not None and p.grad.abs().sum() > 0 for p in cores.values()), model_type
    after = logits(model.eval(), batch)
    assert not torch.allclose(after, before, atol=1e-4)
    torch.testing.assert_close(logits(model.merge_and_unload(), batch), after, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("implementation", ["eager", "batched_mm", "grouped_mm"])
def test_the_update_is_the_same_whichever_experts_kernel_runs(implementation):
    """transformers runs the experts by a loop, batched or grouped products: each reads the adapted weight."""
    if implementation == "grouped_mm" and not hasattr(torch, "_grouped_mm"):
        pytest.skip(f"torch {torch.__version__} has no grouped matrix product (2.9 and later)")
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"), _config(target_modules=[]))
    _perturb(model)
    batch = tiny_batch(model)
    reference = logits(model, batch)
    model.base_model.model.config._experts_implementation = implementation
    torch.testing.assert_close(logits(model, batch), reference, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        merged = model.merge_and_unload()
    merged.config._experts_implementation = implementation
    torch.testing.assert_close(logits(merged, batch), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_type", ["qwen3_moe", "gpt_oss"])  # weights stored (out x in) / (in x out)
def test_each_expert_gets_its_own_tt_factored_update(model_type):
    torch.manual_seed(0)
    model = get_peft_model(tiny_model(model_type, task="CAUSAL_LM"), _config(target_modules=[]))
    _perturb(model)
    wrapper = _wrappers(model)[0]
    a, b = wrapper.loretta_rep_A["default"], wrapper.loretta_rep_B["default"]
    delta = wrapper.get_delta_weight("default")
    assert delta.shape == wrapper.get_param().shape
    with torch.no_grad():
        for e in range(wrapper.num_experts):
            # dW_e = (A_e @ B_e - A0_e @ B0_e) * lora_alpha / r, A_e (in x r) and B_e (r x out) rebuilt from expert e's cores
            a_e, b_e = a.matrices()[e], b.matrices()[e]
            a0_e, b0_e = a.initial_matrices()[e], b.initial_matrices()[e]
            update = (a_e @ b_e - a0_e @ b0_e) * wrapper.scaling["default"]  # in x out
            torch.testing.assert_close(delta[e], update if wrapper.transposed else update.t(), rtol=1e-5, atol=1e-6)
        # the experts' factors are independent: moving expert 0's cores moves expert 0's update only
        for core in [*a.cores, *b.cores]:
            core[0].add_(0.1)
    moved = wrapper.get_delta_weight("default")
    assert not torch.allclose(moved[0], delta[0])
    torch.testing.assert_close(moved[1:], delta[1:])


def test_trainable_parameters_are_the_experts_tt_cores_counted_exactly():
    model = get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"),
                           _config(target_modules=[], trainable_layer_norms=False))
    expected = 0
    for wrapper in _wrappers(model):
        per_expert = (tt_num_params(resolve_tt_shape(wrapper.in_features, 4), 3)
                      + tt_num_params(resolve_tt_shape(4, wrapper.out_features), 3))
        expected += wrapper.num_experts * per_expert
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected > 0
    assert all(p.dtype == torch.float32 for p in _expert_cores(model).values())


def test_a_preset_family_gets_its_default_targets_and_the_experts():
    model = get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"), _config())  # target_modules=None
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LorettaRepLayer)}
    assert adapted == {"q_proj", "v_proj"}
    assert len(_wrappers(model)) == 2 * model.config.num_hidden_layers


# hybrids without a preset (Mamba and attention layers, some with experts): the sizes each needs to run
_SMALL = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=100,
              pad_token_id=0)
HYBRIDS_WITH_EXPERTS = {  # model_type: config sizes
    "jamba": dict(_SMALL, num_hidden_layers=2, num_experts=2, num_experts_per_tok=1, attn_layer_period=2,
                  attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8, mamba_dt_rank=8,
                  use_mamba_kernels=False),
    "granitemoehybrid": dict(_SMALL, num_hidden_layers=2, layer_types=["mamba", "attention"], num_local_experts=4,
                             num_experts_per_tok=2, shared_intermediate_size=64, mamba_n_heads=8, mamba_d_head=16,
                             mamba_d_state=8, mamba_n_groups=1, mamba_chunk_size=8, mamba_expand=2),
    # Nemotron-H: a Mamba, an attention and an experts layer
    "nemotron_h": dict(_SMALL, num_hidden_layers=3, hybrid_override_pattern="M*E", n_routed_experts=4,
                       num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=32,
                       mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=8, n_groups=1, chunk_size=8, head_dim=16,
                       n_group=1, topk_group=1),
}


@pytest.mark.parametrize("model_type", sorted(HYBRIDS_WITH_EXPERTS))
def test_a_family_without_a_preset_adapts_the_experts_alone(model_type):
    """Hybrids have no default targets; their expert weights need none."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no model_type {model_type!r}")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **HYBRIDS_WITH_EXPERTS[model_type]))
    weights = _expert_weights(base)  # Nemotron-H's experts have no gate: up_proj, down_proj
    assert len(weights) == 2, weights
    model = get_peft_model(base, _config(target_parameters=sorted(weights)))
    assert _wrappers(model) and not any(isinstance(m, LorettaRepLayer) for m in model.modules())
    batch = tiny_batch(model)
    model.train()(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _expert_cores(model).values())


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("mixtral", task="CAUSAL_LM"), _config())
    _perturb(model)
    batch = tiny_batch(model)
    expected = logits(model, batch)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_parameters"] == EXPERTS
    torch.manual_seed(1)  # other initial cores: everything that matters is loaded
    loaded = PeftModel.from_pretrained(tiny_model("mixtral", task="CAUSAL_LM"), tmp_path)
    torch.testing.assert_close(logits(loaded, batch), expected)


def test_named_adapters_switch_disable_and_unload():
    torch.manual_seed(0)
    base = tiny_model("qwen3_moe", task="CAUSAL_LM")
    batch = tiny_batch(base)
    plain = logits(base, batch)
    model = get_peft_model(base, _config(target_modules=[], trainable_layer_norms=False))
    _perturb(model, seed=0)
    first = logits(model, batch)
    model.add_adapter("other", _config(target_modules=[], trainable_layer_norms=False))
    model.set_adapter("other")
    _perturb(model, seed=1)
    other = logits(model, batch)
    assert not torch.allclose(first, other, atol=1e-4)
    model.set_adapter("default")
    torch.testing.assert_close(logits(model, batch), first)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, batch), plain)
    model.delete_adapter("other")
    assert all(set(w.loretta_rep_A) == {"default"} for w in _wrappers(model))
    unloaded = model.unload()  # without merging: the base weights as they were
    assert not _wrappers(unloaded)
    torch.testing.assert_close(logits(unloaded, batch), plain)


def test_merge_and_unmerge_in_place():
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"), _config(target_modules=[]))
    _perturb(model)
    batch = tiny_batch(model)
    unmerged = logits(model, batch)
    weight = _wrappers(model)[0].get_param().detach().clone()
    model.merge_adapter()
    torch.testing.assert_close(logits(model, batch), unmerged, rtol=1e-4, atol=1e-4)
    model.unmerge_adapter()
    torch.testing.assert_close(_wrappers(model)[0].get_param(), weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model, batch), unmerged)


def test_layer_selection_applies_to_expert_weights():
    model = get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"),
                           _config(target_modules=[], layers_to_transform=[1]))
    names = [n for n, m in model.named_modules() if isinstance(m, ParamWrapper) and not n.endswith("base_layer")]
    assert names and all(".layers.1." in n for n in names)
    model = get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"),
                           _config(target_modules=[], exclude_modules=r".*layers\.0\..*"))
    assert {m.parameter_name for m in _wrappers(model)} == {"gate_up_proj", "down_proj"}
    assert all(".layers.1." in n for n, m in model.named_modules() if isinstance(m, ParamWrapper))


def test_bf16_model_with_gradient_checkpointing_trains():
    torch.manual_seed(0)
    base = tiny_model("qwen3_moe", task="CAUSAL_LM").to(torch.bfloat16)
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(base, _config(target_modules=[]))
    batch = tiny_batch(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    cores = _expert_cores(model)
    start = {n: p.detach().clone() for n, p in cores.items()}
    model.train()
    for _ in range(2):
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.dtype == torch.float32 for p in cores.values())
    assert all(not torch.equal(p, start[n]) for n, p in cores.items())


def test_unused_tt_shapes_warning_knows_the_expert_factors():
    model = tiny_model("qwen3_moe", task="CAUSAL_LM")
    # 64x4: the experts' A factors of gate_up_proj (hidden size 64, r = 4), used: not in the list
    with pytest.warns(UserWarning, match=r"tt_shapes \['999x4'\] match no TT layer"):
        model = get_peft_model(model, _config(target_modules=[], tt_shapes={"64x4": [8, 8, 4], "999x4": [27, 37, 4]}))
    assert _wrappers(model)[-1].loretta_rep_A["default"].shape == (8, 8, 4)


@pytest.mark.parametrize(
    "model_type, kw, message",
    [
        ("qwen3_moe", dict(target_parameters=["experts.gate_up", "experts.down_proj"]),
         r"target_parameters \['experts.gate_up'\] match no parameter of this model; its stacked expert weights: "
         r"\['model.layers.\*.mlp.experts.gate_up_proj', 'model.layers.\*.mlp.experts.down_proj'\]"),
        ("qwen3_moe", dict(target_parameters=["mlp.gate.weight"]),
         r"mlp.gate.weight has shape \(4, 64\).*stacked expert weights.*target_modules"),
        ("qwen3_next", dict(target_parameters=["linear_attn.conv1d.weight"]),
         r"conv1d.weight is a weight of Conv1d, not a stack of experts"),
        ("qwen3_moe", dict(layers_to_transform=[5]), r"select no weight of this model"),
        ("llama", dict(target_parameters=["experts.down_proj"]), r"its stacked expert weights: none"),
        # a linear-attention layer's Conv1d weight is 3-D too, but no expert weight: not listed
        ("qwen3_next", dict(target_parameters=["experts.gate"]),
         r"stacked expert weights: \['model.layers.\*.mlp.experts.gate_up_proj', 'model.layers.\*.mlp.experts.down_proj'\]$"),
    ],
)
def test_bad_targets_are_named(model_type, kw, message):
    with pytest.raises(ValueError, match=message):
        get_peft_model(tiny_model(model_type, task="CAUSAL_LM"), _config(target_modules=[], **kw))


def test_dropout_cannot_apply_to_expert_weights():
    with pytest.raises(ValueError, match=r"lora_dropout=0.05 cannot apply to target_parameters.*set lora_dropout=0.0"):
        LorettaRepConfig(target_parameters=EXPERTS)
    config = _config()
    config.lora_dropout = 0.1  # changed after the config was checked
    with pytest.raises(ValueError, match="lora_dropout=0.1 cannot apply"):
        get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"), config)
    with pytest.raises(ValueError, match="target_parameters must be a parameter name or a list of them"):
        LorettaRepConfig(lora_dropout=0.0, target_parameters=[3])


def test_adapters_must_name_the_same_expert_weights():
    model = get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"), _config(target_modules=[]))
    with pytest.raises(ValueError, match=r"every adapter with target_parameters must name the same ones"):
        model.add_adapter("other", _config(target_modules=[], target_parameters=["experts.down_proj"]))


def test_mixed_adapter_batches_refuse_expert_adapters():
    model = get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"), _config())
    model.add_adapter("other", _config())
    batch = tiny_batch(model)
    with pytest.raises(ValueError, match=r"adapters \['default', 'other'\] adapt stacked expert weights"):
        model.eval()(**batch, adapter_names=["default", "other"])


def test_mixed_batches_run_when_no_named_adapter_adapts_the_experts():
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"), _config(target_parameters=None))  # q, v
    model.add_adapter("experts", _config())  # inactive: the experts run as they are for every sample
    _perturb(model)
    model.eval()
    batch = tiny_batch(model)
    mixed = logits(model, {**batch, "adapter_names": ["default", "__base__"]})
    torch.testing.assert_close(mixed[:1], logits(model, {k: v[:1] for k, v in batch.items()}))
    with model.disable_adapter():
        torch.testing.assert_close(mixed[1:], logits(model, {k: v[1:] for k, v in batch.items()}))


def test_generation_with_cache_matches_the_merged_model():
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"), _config(target_modules=[]))
    _perturb(model)
    model.eval()
    prompt = tiny_batch(model, batch=1, length=5)["input_ids"]
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        generated = model.generate(input_ids=prompt, **kwargs)
        merged = model.merge_and_unload().generate(input_ids=prompt, **kwargs)
    assert generated.shape[1] == prompt.shape[1] + 6
    torch.testing.assert_close(generated, merged)


def test_transformers_own_load_adapter_restores_the_expert_updates(tmp_path):
    # without trained norms (modules_to_save, which transformers' load_adapter restores from 5.18 on): from 5.0
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"),
                           _config(target_modules=[], trainable_layer_norms=False))
    _perturb(model)
    batch = tiny_batch(model)
    expected = logits(model, batch)
    model.save_pretrained(tmp_path)
    plain = tiny_model("qwen3_moe", task="CAUSAL_LM")
    plain.load_adapter(str(tmp_path))
    assert _wrappers(plain)
    torch.testing.assert_close(logits(plain, batch), expected)


@pytest.mark.parametrize("init_method, unchanged", [("noise_reduction", True), ("identity", True), ("gaussian", False)])
def test_initialisations_on_expert_weights(init_method, unchanged):
    torch.manual_seed(0)
    base = tiny_model("qwen3_moe", task="CAUSAL_LM")
    batch = tiny_batch(base)
    before = logits(base, batch)
    model = get_peft_model(base, _config(target_modules=[], init_method=init_method))
    assert torch.allclose(logits(model, batch), before, atol=1e-6) == unchanged
    model.train()(**batch, labels=batch["input_ids"]).loss.backward()
    # identity: the B factors' last core is zero, so only B's cores get gradient at step 0, as LoRA's B
    cores = {n: p for n, p in _expert_cores(model).items() if ".cores." in n}
    got_gradient = {n for n, p in cores.items() if p.grad is not None and p.grad.abs().sum() > 0}
    if init_method == "identity":
        assert got_gradient and all("loretta_rep_B" in n for n in got_gradient)
    else:
        assert got_gradient == set(cores)


def test_peft_wrapper_free_api_round_trips_expert_updates():
    from peft import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict

    torch.manual_seed(0)
    model = inject_adapter_in_model(_config(target_modules=[]), tiny_model("qwen3_moe", task="CAUSAL_LM"))
    _perturb(model)
    batch = tiny_batch(model)
    expected = logits(model, batch)
    state = get_peft_model_state_dict(model)
    assert any(".experts." in key and ".cores." in key for key in state)
    torch.manual_seed(1)
    other = inject_adapter_in_model(_config(target_modules=[]), tiny_model("qwen3_moe", task="CAUSAL_LM"))
    assert not set_peft_model_state_dict(other, state).unexpected_keys
    torch.testing.assert_close(logits(other, batch), expected)
