"""LoRETTA_adp on the output of a whole block rather than a linear layer (loretta/adp/layer.py LorettaAdpBlock): a
mixture of experts' sparse block (the default for every MoE family, whose experts are 3-D parameters), or any
module whose output is the hidden state, named in target_modules."""

import pytest
import torch
from peft import PeftModel
from torch import nn

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model
from loretta.adp import LorettaAdpBlock, LorettaAdpLayer

from .tiny_models import MOE_DECODERS, logits, perturb_trainable, tiny_batch, tiny_model


def _config(**kw):
    kw.setdefault("bottleneck_size", 8)
    return LorettaAdpConfig(task_type="CAUSAL_LM", tensor_rank=3, **kw)


def _blocks(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, LorettaAdpBlock)}


@pytest.mark.parametrize("family", MOE_DECODERS)
def test_every_mixture_of_experts_family_adapts_its_feed_forward_blocks_output(family, tmp_path):
    """One adapter per layer, on the whole feed-forward block (the sparse one, or the dense MLP of the first
    layers some families have, which has the same name); the output is unchanged at step 0, the adapters train,
    and a saved adapter loads to the same outputs."""
    model = tiny_model(family, task="CAUSAL_LM")
    batch = tiny_batch(model)
    base = logits(model, batch)
    peft = get_peft_model(model, _config())
    blocks = _blocks(peft)
    assert len(blocks) == model.config.num_hidden_layers
    assert not [n for n, m in peft.named_modules() if isinstance(m, LorettaAdpLayer) and n not in blocks]
    assert any(hasattr(m.base_layer, "experts") for m in blocks.values())
    torch.testing.assert_close(logits(peft, batch), base)

    peft.train()
    peft(**batch, labels=batch["input_ids"]).loss.backward()
    ups = [p for n, p in peft.named_parameters() if "loretta_adp_up" in n and "cores" in n]
    assert ups and all(p.grad is not None and p.grad.abs().sum() > 0 for p in ups)

    peft.eval()
    perturb_trainable(peft, scale=0.1)
    adapted = logits(peft, batch)
    assert not torch.allclose(adapted, base)
    with peft.disable_adapter():
        torch.testing.assert_close(logits(peft, batch), base)
    peft.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(family, task="CAUSAL_LM"), tmp_path)
    torch.testing.assert_close(logits(loaded, batch), adapted)


def _by_hand(block: LorettaAdpBlock, name: str, h: torch.Tensor) -> torch.Tensor:
    hidden = torch.relu(block.loretta_adp_down[name](h))
    return h + block.loretta_adp_up[name](hidden)


def test_the_adapter_follows_the_blocks_output_and_passes_the_rest_of_a_tuple_through():
    """gpt-oss's MoE block returns (hidden state, router scores): the adapter acts on the first, the scores
    are the block's own."""
    peft = get_peft_model(tiny_model("gpt_oss", task="CAUSAL_LM"), _config())
    perturb_trainable(peft, scale=0.1)
    block = _blocks(peft)["base_model.model.model.layers.0.mlp"]
    h = torch.randn(2, 5, 64)
    with torch.no_grad():
        hidden, scores = block(h)
        plain_hidden, plain_scores = block.base_layer(h)
    torch.testing.assert_close(hidden, _by_hand(block, "default", plain_hidden))
    torch.testing.assert_close(scores, plain_scores)


@pytest.mark.parametrize(("target", "kind"), [("mlp", "LlamaMLP"), ("self_attn", "LlamaAttention")])
def test_a_dense_models_mlp_or_attention_block_can_be_targeted(target, kind):
    model = tiny_model("llama", task="CAUSAL_LM")
    batch = tiny_batch(model)
    base = logits(model, batch)
    peft = get_peft_model(model, _config(target_modules=[target]))
    blocks = _blocks(peft)
    assert [type(m.base_layer).__name__ for m in blocks.values()] == [kind, kind]
    torch.testing.assert_close(logits(peft, batch), base)
    perturb_trainable(peft, scale=0.1)
    captured = {}
    block = blocks[f"base_model.model.model.layers.1.{target}"]
    block.base_layer.register_forward_hook(lambda m, a, out: captured.setdefault("out", out))
    block.register_forward_hook(lambda m, a, out: captured.setdefault("adapted", out))
    assert not torch.allclose(logits(peft, batch), base)
    plain = captured["out"][0] if isinstance(captured["out"], tuple) else captured["out"]
    adapted = captured["adapted"][0] if isinstance(captured["adapted"], tuple) else captured["adapted"]
    torch.testing.assert_close(adapted, _by_hand(block, "default", plain))


def test_generation_with_the_cache_runs_the_adapted_blocks():
    model = get_peft_model(tiny_model("qwen3_moe", task="CAUSAL_LM"), _config())
    perturb_trainable(model, scale=0.1)
    prompt = tiny_batch(model)["input_ids"]
    out = model.eval().generate(input_ids=prompt, max_new_tokens=4, do_sample=False, output_logits=True,
                                return_dict_in_generate=True)
    with torch.no_grad():
        full = model(input_ids=out.sequences[:, :-1]).logits[:, -1]
    torch.testing.assert_close(out.logits[-1], full, rtol=1e-4, atol=1e-5)


def test_named_adapters_a_mixed_batch_and_unload():
    model = tiny_model("mixtral", task="CAUSAL_LM")
    batch = tiny_batch(model)
    base = logits(model, batch)
    peft = get_peft_model(model, _config())
    peft.add_adapter("other", _config(bottleneck_size=4))
    perturb_trainable(peft, seed=0, scale=0.1)
    peft.set_adapter("other")
    perturb_trainable(peft, seed=1, scale=0.1)
    peft.eval()
    other = logits(peft, batch)
    peft.set_adapter("default")
    default = logits(peft, batch)
    with torch.no_grad():
        mixed = peft(**batch, adapter_names=["other", "__base__"]).logits
    torch.testing.assert_close(mixed[0], other[0])
    torch.testing.assert_close(mixed[1], base[1])
    assert not torch.allclose(default, other)

    peft.delete_adapter("other")
    assert all(set(m.loretta_adp_down) == {"default"} for m in _blocks(peft).values())
    torch.testing.assert_close(logits(peft, batch), default)
    unloaded = peft.unload()
    assert type(unloaded.model.layers[0].mlp).__name__ == "MixtralSparseMoeBlock"
    assert not _blocks(unloaded)


def test_a_block_adapter_saved_by_the_old_default_still_loads(tmp_path):
    """An adapter saved before MoE families' default moved from o_proj to the feed-forward block names its
    targets in adapter_config.json, so it loads where it was trained."""
    model = get_peft_model(tiny_model("mixtral", task="CAUSAL_LM"), _config(target_modules=["o_proj"]))
    perturb_trainable(model, scale=0.1)
    batch = tiny_batch(model)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("mixtral", task="CAUSAL_LM"), tmp_path)
    assert not _blocks(loaded)
    torch.testing.assert_close(logits(loaded, batch), logits(model.eval(), batch))


def test_a_block_on_the_input_side_is_an_error():
    with pytest.raises(ValueError, match=r"input_side_modules \['mlp'\] name model\.layers\.\*\.mlp "
                                         r"\(MixtralSparseMoeBlock\), not a linear layer.*output only"):
        get_peft_model(tiny_model("mixtral", task="CAUSAL_LM"), _config(target_modules=["mlp"], input_side_modules=["mlp"]))


def test_a_block_and_a_layer_inside_it_are_an_error():
    with pytest.raises(ValueError, match=r"matches model\.layers\.0\.mlp and model\.layers\.0\.mlp\.down_proj inside "
                                         r"it.*not both"):
        get_peft_model(tiny_model("llama", task="CAUSAL_LM"), _config(target_modules=["mlp", "down_proj"]))


def test_a_block_holding_a_trained_norm_is_an_error():
    """Qwen3's attention normalises its queries and keys (q_norm, k_norm), which LoRETTA trains: wrapped whole,
    they would no longer be found and stay frozen."""
    with pytest.raises(ValueError, match=r"cannot adapt model\.layers\.0\.self_attn \(Qwen3Attention\) whole: "
                                         r"model\.layers\.0\.self_attn\.q_norm inside it is trained whole"):
        get_peft_model(tiny_model("qwen3", task="CAUSAL_LM"), _config(target_modules=["self_attn"]))
    peft = get_peft_model(tiny_model("qwen3", task="CAUSAL_LM"),
                          _config(target_modules=["self_attn"], trainable_layer_norms=False))
    assert len(_blocks(peft)) == 2


def test_a_block_whose_output_is_not_the_hidden_state_is_an_error_naming_the_widths():
    """The adapter's width is the model's hidden size: a vision tower's MLP (32 wide in a 64-wide model) is
    refused at its first forward."""
    model = tiny_model("llava", task="CAUSAL_LM")
    vision_mlp = next(n for n, _ in model.named_modules() if n.startswith("model.vision_tower") and n.endswith(".mlp"))
    peft = get_peft_model(model, _config(target_modules=[vision_mlp]))
    with pytest.raises(ValueError, match=r"expects its output .* to be the hidden state, 64 features wide; it "
                                         r"returned 32 features"):
        peft(pixel_values=torch.randn(1, 3, 32, 32), input_ids=torch.full((1, 17), model.config.image_token_id))


def test_modules_without_parameters_and_norms_are_not_blocks_and_rep_takes_no_blocks():
    with pytest.raises(ValueError, match=r"matches model\.layers\.0\.mlp\.act_fn \(SiLU.*\).*not a linear layer or "
                                         r"a block with parameters"):
        get_peft_model(tiny_model("llama", task="CAUSAL_LM"), _config(target_modules=["act_fn"]))
    with pytest.raises(ValueError, match=r"matches model\.layers\.0\.input_layernorm .*not a linear layer or a block"):
        get_peft_model(tiny_model("llama", task="CAUSAL_LM"), _config(target_modules=["input_layernorm"]))
    with pytest.raises(ValueError, match=r"matches model\.layers\.0\.mlp \(MixtralSparseMoeBlock\).*not a linear "
                                         r"layer: LoRETTA adapts nn\.Linear"):
        get_peft_model(tiny_model("mixtral", task="CAUSAL_LM"),
                       LorettaRepConfig(task_type="CAUSAL_LM", target_modules=["mlp"]))


def test_a_model_without_a_hidden_size_is_told_to_target_linear_layers():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(16, 16), nn.ReLU())

        def forward(self, x):
            return self.block(x)

    with pytest.raises(ValueError, match=r"takes its width from the model config's hidden_size, which Tiny does "
                                         r"not have"):
        get_peft_model(Tiny(), LorettaAdpConfig(target_modules=["block"], bottleneck_size=4))
