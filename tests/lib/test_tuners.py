"""Each tuner on a tiny model of each family: placement, init, training, save/load, adapters, merge, unload."""

import pytest
import torch
from peft import PeftModel
from peft.utils import ModulesToSaveWrapper

from loretta import LorettaAdpConfig, LorettaAdpLayer, LorettaRepConfig, LorettaRepLayer, TaskType, TTLinear, get_peft_model

from loretta.presets import FAMILY_PRESETS

from .tiny_models import (ALL_FAMILIES, DECODERS, SEQ2SEQ, VLM_DECODERS, default_task, logits, perturb_trainable,
                          tiny_batch, tiny_model)

METHODS = {
    "adp": lambda task, **kw: LorettaAdpConfig(task_type=task, tensor_rank=3, bottleneck_size=8, **kw),
    "rep": lambda task, **kw: LorettaRepConfig(task_type=task, tensor_rank=3, r=4, lora_dropout=0.0, **kw),
}
LAYER_CLS = {"adp": LorettaAdpLayer, "rep": LorettaRepLayer}


def test_public_api_from_the_readme_works_verbatim(capsys):
    model = tiny_model("llama", task="CAUSAL_LM")
    peft_config = LorettaAdpConfig(bottleneck_size=64, non_linearity="relu", adapter_dropout=0.0,
        target_modules=None, scaling=1.0, bias="none", task_type="CAUSAL_LM", tensor_rank=5)
    adp = get_peft_model(model, peft_config)
    adp.print_trainable_parameters()
    assert isinstance(adp, PeftModel)
    peft_config = LorettaRepConfig(r=8, lora_alpha=16, target_modules=None, lora_dropout=0.05,
        bias="none", task_type="CAUSAL_LM", tensor_rank=5)
    rep = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), peft_config)
    rep.print_trainable_parameters()
    assert isinstance(rep, PeftModel)
    assert capsys.readouterr().out.count("trainable params") == 2


@pytest.mark.parametrize("task_type", ["SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", TaskType.SEQ_CLS,
                                       TaskType.CAUSAL_LM, TaskType.TOKEN_CLS, TaskType.SEQ_2_SEQ_LM])
def test_task_type_accepts_strings_and_enum_members(task_type):
    assert LorettaAdpConfig(task_type=task_type).task_type == task_type
    assert LorettaRepConfig(task_type=task_type).task_type == task_type


def _base(family, task):
    if task != "TOKEN_CLS":
        return tiny_model(family, task=task)
    from transformers import AutoModelForTokenClassification

    from .tiny_models import tiny_config

    torch.manual_seed(0)
    return AutoModelForTokenClassification.from_config(tiny_config(family, num_labels=3)).eval()


@pytest.mark.parametrize(("family", "task", "method", "extra"), [
    ("bert", "SEQ_CLS", "adp", {}),
    ("roberta", "SEQ_CLS", "rep", {}),
    ("bert", "SEQ_CLS", "rep", {"target_modules": "all-linear"}),
    ("bert", "TOKEN_CLS", "rep", {"target_modules": "all-linear"}),
    ("llama", "CAUSAL_LM", "adp", {}),
])
def test_a_task_type_member_builds_the_model_its_name_builds(tmp_path, family, task, method, extra):
    """TaskType.SEQ_CLS and "SEQ_CLS" are the same task: the same modules adapted and trained (for
    sequence classification: the tensorized head, not an adapter on it), and the model saves and loads."""
    def trainable(model):
        return sorted(n for n, p in model.named_parameters() if p.requires_grad)

    by_name = get_peft_model(_base(family, task), METHODS[method](task, **extra))
    by_member = get_peft_model(_base(family, task), METHODS[method](TaskType[task], **extra))
    assert trainable(by_member) == trainable(by_name)
    perturb_trainable(by_member)
    by_member.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(_base(family, task), tmp_path)
    batch = tiny_batch(loaded)
    torch.testing.assert_close(logits(loaded, batch), logits(by_member, batch), rtol=0, atol=0)


def test_token_classification_and_seq2seq_models():
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoModelForTokenClassification

    bert = AutoModelForTokenClassification.from_config(
        AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             vocab_size=100, num_labels=3))
    tok = get_peft_model(bert, LorettaAdpConfig(task_type="TOKEN_CLS", bottleneck_size=8, tensor_rank=2))
    assert tok(**tiny_batch(tok)).logits.shape == (2, 8, 3)
    bart = AutoModelForSeq2SeqLM.from_config(
        AutoConfig.for_model("bart", d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                             decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100))
    s2s = get_peft_model(bart, LorettaRepConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q_proj", "v_proj"], r=4,
                                                tensor_rank=2))
    assert s2s(**tiny_batch(s2s)).logits.shape == (2, 8, 100)


def test_every_preset_family_is_tested():
    assert sorted(ALL_FAMILIES) == sorted(FAMILY_PRESETS)


def test_the_readme_shows_the_preset_table():
    """README.md's placement table is scripts/presets_table.py's output, so it names every preset family."""
    import runpy
    from pathlib import Path

    repo = Path(__file__).parents[2]
    table = runpy.run_path(str(repo / "scripts" / "presets_table.py"))["preset_table"]()
    assert table in (repo / "README.md").read_text()
    assert all(f"`{model_type}`" in table for model_type in FAMILY_PRESETS)


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_default_placement_and_training_step(family, method):
    task = default_task(family)
    model = get_peft_model(tiny_model(family, task=task), METHODS[method](task))
    layers = [m for m in model.modules() if isinstance(m, LAYER_CLS[method])]
    assert layers, "nothing was adapted"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("cores" in n for n in trainable)
    # every trainable parameter is a TT core, an adapter bias, a norm, or the head
    assert all(any(s in n for s in ("loretta_", "modules_to_save")) for n in trainable), sorted(trainable)[:5]
    model.train()
    batch = tiny_batch(model)
    if task == "CAUSAL_LM":
        # padded, as the runner's batches are: the attention takes its masked path (where GQA repeats keys
        # and values; DeepSeek's latent attention with fewer key/value heads than heads failed only there)
        batch["attention_mask"][1, -3:] = 0
    out = model(**batch, labels=torch.tensor([0, 1]) if task == "SEQ_CLS" else batch["input_ids"])
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "cores" in n]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_adapter_counts_and_sides_per_family():
    def count(family):
        model = get_peft_model(tiny_model(family, task=default_task(family)), METHODS["adp"](default_task(family)))
        layers = [m for m in model.modules() if isinstance(m, LorettaAdpLayer)]
        return len(layers), sorted({s for m in layers for s in m.side.values()})

    assert count("bert") == (4, ["output"])  # attention output + FFN output, 2 layers
    assert count("deberta") == (4, ["output"])
    assert count("mpnet") == (4, ["output"])
    assert count("electra") == (4, ["output"])
    assert count("distilbert") == (4, ["output"])  # out_lin + lin2
    assert count("modernbert") == (6, ["output"])  # attn.Wo + mlp.Wo, 3 layers
    assert count("llama") == (6, ["input", "output"])  # gate/up input side, down output side
    assert count("opt") == (4, ["input", "output"])  # fc1 input, fc2 output
    assert count("gpt2") == (4, ["input", "output"])
    assert count("gpt_neox") == (4, ["input", "output"])  # dense_h_to_4h input, dense_4h_to_h output
    assert count("phi3") == (4, ["input", "output"])  # the fused gate_up_proj's input, down_proj's output
    assert count("qwen3") == (6, ["input", "output"])
    assert count("falcon") == (4, ["input", "output"])  # dense_h_to_4h input, dense_4h_to_h output
    assert count("bloom") == (4, ["input", "output"])
    assert count("gptj") == (4, ["input", "output"])  # fc_in input, fc_out output
    # mixture of experts: the experts are no linear layers; the sparse block's output, 2 layers
    assert count("mixtral") == (2, ["output"])
    assert count("qwen2_moe") == (2, ["output"])  # the block (routed and shared experts), not inside it
    # encoder-decoders: both stacks' feed-forward blocks, 2 layers each
    assert count("t5") == (8, ["input", "output"])  # wi input, wo output
    assert count("t5-gated") == (12, ["input", "output"])  # wi_0 and wi_1 input, wo output (v1.1, FLAN-T5)
    assert count("bart") == (8, ["input", "output"])  # fc1 input, fc2 output


@pytest.mark.parametrize(("family", "expected"), [
    ("glm4_moe", (2, ["output"])),  # the dense first layer's MLP, then the sparse block
    ("deepseek_v3", (2, ["output"])),
    ("qwen3_5_text", (6, ["input", "output"])),  # the MLP of a linear- and of a full-attention layer
    ("qwen3_5_moe_text", (2, ["output"])),  # the sparse block after the linear and the full attention
    ("gemma4_text", (9, ["input", "output"])),  # 3 layers
])
def test_adapter_counts_and_sides_of_newer_families(family, expected):  # (apart: older transformers lack some)
    model = get_peft_model(tiny_model(family, task="CAUSAL_LM"), METHODS["adp"]("CAUSAL_LM"))
    layers = [m for m in model.modules() if isinstance(m, LorettaAdpLayer)]
    assert (len(layers), sorted({s for m in layers for s in m.side.values()})) == expected


@pytest.mark.parametrize("family", ["t5", "bart"])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_encoder_decoders_classify_with_a_tensorized_head_and_generate(family, method):
    clf = get_peft_model(tiny_model(family, task="SEQ_CLS"), METHODS[method]("SEQ_CLS"))
    head = clf.base_model.model.classification_head
    assert isinstance(head.modules_to_save["default"].dense, TTLinear)
    batch = tiny_batch(clf)
    clf.train()(**batch, labels=torch.tensor([0, 1])).loss.backward()
    assert head.modules_to_save["default"].out_proj.weight.grad is not None  # the label projection trains

    lm = get_peft_model(tiny_model(family, task="SEQ_2_SEQ_LM"), METHODS[method]("SEQ_2_SEQ_LM"))
    perturb_trainable(lm)
    out = lm.eval().generate(input_ids=batch["input_ids"], max_new_tokens=4, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():  # generate()'s last step, with its cache, is the adapted model's full forward
        full = lm(input_ids=batch["input_ids"], decoder_input_ids=out.sequences[:, :-1]).logits[:, -1]
        with lm.disable_adapter():
            base = lm(input_ids=batch["input_ids"], decoder_input_ids=out.sequences[:, :-1]).logits[:, -1]
    torch.testing.assert_close(out.logits[-1], full, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(full, base)


@pytest.mark.parametrize(("family", "target", "out_features"), [
    ("gpt_neox", "attention.query_key_value", 3 * 64),  # the fused q, k, v of 4 heads of 16
    ("phi3", "self_attn.qkv_proj", (4 + 2 * 2) * 16),  # 4 query heads, 2 key/value heads (GQA)
    ("falcon", "self_attention.query_key_value", (4 + 2) * 16),  # multi-query: 4 query heads, one key and value
    ("bloom", "self_attention.query_key_value", 3 * 64),
])
def test_rep_adapts_the_fused_attention_projection_whole(family, target, out_features):
    model = get_peft_model(tiny_model(family, task="CAUSAL_LM"), METHODS["rep"]("CAUSAL_LM"))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LorettaRepLayer)}
    assert len(layers) == 2 and all(n.endswith(target) for n in layers)
    assert all(m.out_features == out_features for m in layers.values())


@pytest.mark.parametrize(("family", "adapted"), [
    # latent attention: the query's up-projection (4 heads of 8 + 8 rotary) and the keys' and values'
    # (4 heads of 8 without rotary + 16 value) from the shared latent (16 wide)
    ("deepseek_v3", {"layers.0.self_attn.q_b_proj": (32, 4 * 16), "layers.0.self_attn.kv_b_proj": (16, 4 * (8 + 16)),
                     "layers.1.self_attn.q_b_proj": (32, 4 * 16), "layers.1.self_attn.kv_b_proj": (16, 4 * (8 + 16))}),
    # a Gated DeltaNet layer (2 key heads of 16 for q and for k, 4 value heads of 16), then a full-attention one
    # (q_proj doubled by its output gate; 2 key/value heads)
    ("qwen3_5_text", {"layers.0.linear_attn.in_proj_qkv": (64, 32 + 32 + 64),
                      "layers.1.self_attn.q_proj": (64, 2 * 64), "layers.1.self_attn.v_proj": (64, 32)}),
    ("qwen3_next", {"layers.0.linear_attn.in_proj_qkvz": (64, 32 + 32 + 64 + 64),  # and the gate z
                    "layers.1.self_attn.q_proj": (64, 2 * 64), "layers.1.self_attn.v_proj": (64, 32)}),
    # a sliding-window layer (heads of 16), two full-attention ones (heads of 32); the third reuses the second's
    # keys and values: it has no v_proj
    ("gemma4_text", {"layers.0.self_attn.q_proj": (64, 4 * 16), "layers.0.self_attn.v_proj": (64, 2 * 16),
                     "layers.1.self_attn.q_proj": (64, 4 * 32), "layers.1.self_attn.v_proj": (64, 2 * 32),
                     "layers.2.self_attn.q_proj": (64, 4 * 32)}),
])
def test_rep_on_latent_linear_and_shared_kv_attention(family, adapted):
    model = get_peft_model(tiny_model(family, task="CAUSAL_LM"), METHODS["rep"]("CAUSAL_LM"))
    layers = {n[n.index("layers."):]: (m.in_features, m.out_features) for n, m in model.named_modules()
              if isinstance(m, LorettaRepLayer)}
    assert layers == adapted


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_a_top_level_head_layer_is_tensorized_in_its_own_copy(method):
    """DistilBERT's head is `pre_classifier` (hidden x hidden) then `classifier`, both top-level layers: the
    first is tensorized and saved whole as a layer of its own; the pretrained one stays for the base model."""
    model = get_peft_model(tiny_model("distilbert"), METHODS[method]("SEQ_CLS"))
    wrapper = model.base_model.model.pre_classifier
    assert isinstance(wrapper, ModulesToSaveWrapper)
    assert isinstance(wrapper.modules_to_save["default"], TTLinear)
    assert type(wrapper.original_module) is torch.nn.Linear and not wrapper.original_module.weight.requires_grad
    assert all(p.requires_grad for p in wrapper.modules_to_save["default"].parameters())
    batch = tiny_batch(model)
    model.train()(**batch, labels=torch.tensor([0, 1])).loss.backward()
    assert all(p.grad is not None for p in wrapper.modules_to_save["default"].parameters())
    model.eval()
    with torch.no_grad(), model.disable_adapter():  # the base model's forward, with its pretrained head
        torch.testing.assert_close(model(**batch).logits, tiny_model("distilbert")(**batch).logits)


def test_a_norm_inside_the_head_trains_as_part_of_the_head():
    """ModernBERT's head is dense -> act -> norm: the norm trains in the head's copy, not in a second wrapper
    nested in it (which left the copy's norm frozen and never ran the wrapped one)."""
    model = get_peft_model(tiny_model("modernbert"), METHODS["adp"]("SEQ_CLS"))
    head = model.base_model.model.head
    assert not any(isinstance(m, ModulesToSaveWrapper) for m in head.modules() if m is not head)
    batch = tiny_batch(model)
    model.train()(**batch, labels=torch.tensor([0, 1])).loss.backward()
    norm = head.modules_to_save["default"].norm
    assert norm.weight.requires_grad and norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", VLM_DECODERS)
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_vision_language_models_adapt_the_language_model_only(tmp_path, family, method):
    """The vision tower's layers share the decoder's names (q_proj, v_proj, ...) and it has norms of its own:
    LoRETTA goes into the language model only (`language_model`; Idefics3's and SmolVLM's `text_model`), and
    the tower and projector stay frozen and untouched."""
    scope = f".{FAMILY_PRESETS[family].within}."
    model = get_peft_model(tiny_model(family, task="CAUSAL_LM"), METHODS[method]("CAUSAL_LM"))
    adapted = [n for n, m in model.named_modules() if isinstance(m, LAYER_CLS[method])]
    assert adapted and all(scope in n for n in adapted)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("norm" in n for n in trainable) and all(scope in n for n in trainable)
    perturb_trainable(model)
    batch = tiny_batch(model)
    expected = logits(model, batch)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(family, task="CAUSAL_LM"), tmp_path)
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=0)


def test_a_vision_language_model_still_reads_images():
    base = tiny_model("gemma3", task="CAUSAL_LM")
    torch.nn.init.normal_(base.model.multi_modal_projector.mm_input_projection_weight)  # from_config: zeros
    model = get_peft_model(base, METHODS["adp"]("CAUSAL_LM"))
    perturb_trainable(model)
    ids = torch.tensor([[5, 297] + [299] * 4 + [298, 6, 7]])  # text, <start of image>, 4 image tokens, <end>, text
    pixels, other = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # the image reaches the adapted model's output
        assert not torch.allclose(model.eval()(input_ids=ids, pixel_values=pixels).logits,
                                  model(input_ids=ids, pixel_values=other).logits)
    model.train()(input_ids=ids, pixel_values=pixels, labels=ids, token_type_ids=(ids == 299).long()).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_per_head_query_and_key_norms_train_with_the_others():
    """Qwen3 (and OLMo2) normalise q and k inside the attention: those norms train like the block norms."""
    model = get_peft_model(tiny_model("qwen3", task="CAUSAL_LM"), METHODS["adp"]("CAUSAL_LM"))
    trained = {n.split(".modules_to_save")[0].split("layers.0.")[-1]
               for n, p in model.named_parameters() if p.requires_grad and "layers.0." in n and "norm" in n}
    assert trained == {"self_attn.q_norm", "self_attn.k_norm", "input_layernorm", "post_attention_layernorm"}


def test_gemma4_moe_adapts_the_dense_mlp_that_runs_beside_its_experts():
    """Gemma 4's mixture of experts (26B A4B) keeps a dense MLP in every layer, its output added to the experts':
    LoRETTA_adp takes the LLaMA places on it; the router and the experts stay frozen."""
    model = get_peft_model(tiny_model("gemma4_text", task="CAUSAL_LM", enable_moe_block=True, num_experts=4,
                                      top_k_experts=2, moe_intermediate_size=32), METHODS["adp"]("CAUSAL_LM"))
    adapted = {n.split("layers.")[-1].split(".", 1)[1] for n, m in model.named_modules()
               if isinstance(m, LorettaAdpLayer)}
    assert adapted == {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".experts." in n or ".router." in n)
    batch = tiny_batch(model)
    model.train()(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_the_gated_norm_of_linear_attention_trains_with_the_others():
    """Qwen3.5's Gated DeltaNet normalises its output with an RMSNorm that also takes a gate (forward(x, gate)):
    it trains like the block norms (its forward, having two inputs, is not the recomputed one)."""
    model = get_peft_model(tiny_model("qwen3_5_text", task="CAUSAL_LM"), METHODS["adp"]("CAUSAL_LM"))
    trained = {n.split(".modules_to_save")[0].split("layers.0.")[-1]: p
               for n, p in model.named_parameters() if p.requires_grad and "layers.0." in n and "norm" in n}
    assert set(trained) == {"linear_attn.norm", "input_layernorm", "post_attention_layernorm"}
    batch = tiny_batch(model)
    model.train()(**batch, labels=batch["input_ids"]).loss.backward()
    assert trained["linear_attn.norm"].grad.abs().sum() > 0


@pytest.mark.parametrize("family", DECODERS + SEQ2SEQ + ["t5-gated"])
@pytest.mark.parametrize("method", ["adp", "rep"])
@pytest.mark.parametrize("init", ["identity", "noise_reduction"])
def test_output_preserving_inits_leave_output_unchanged_and_gaussian_does_not(family, method, init):
    task = default_task(family)
    base = tiny_model(family, task=task)
    batch = tiny_batch(base)
    before = logits(base, batch)
    model = get_peft_model(base, METHODS[method](task, init_method=init))
    torch.testing.assert_close(logits(model, batch), before)
    model = get_peft_model(tiny_model(family, task=task), METHODS[method](task, init_method="gaussian"))
    assert not torch.allclose(logits(model, batch), before)


def test_identity_init_unchanged_for_encoders_with_a_dense_head():
    base = tiny_model("roberta")
    batch = tiny_batch(base)
    before = logits(base, batch)
    model = get_peft_model(base, METHODS["adp"]("SEQ_CLS", tensorized_head=False))
    torch.testing.assert_close(logits(model, batch), before)


@pytest.mark.parametrize("family", ["bert", "roberta", "deberta", "distilbert", "modernbert", "llama", "gpt2", "t5",
                                    "bart"])
@pytest.mark.parametrize("method", ["adp", "rep"])
@pytest.mark.parametrize("init", ["noise_reduction", "identity"])
def test_save_and_load_round_trip_everything_trained(tmp_path, family, method, init):
    task = default_task(family)
    model = get_peft_model(tiny_model(family, task=task), METHODS[method](task, init_method=init))
    perturb_trainable(model)
    batch = tiny_batch(model)
    expected = logits(model, batch)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(family, task=task), tmp_path)
    torch.testing.assert_close(logits(loaded, batch), expected)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    restored = dict(loaded.named_parameters())
    for name, p in trained.items():
        torch.testing.assert_close(restored[name], p, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_auto_peft_model_loads_for_inference_and_is_trainable_resumes_training(tmp_path, family, method):
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

    task = default_task(family)
    base = tiny_model(family, task=task)
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, METHODS[method](task))
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")  # what a hub id would be
    perturb_trainable(model)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    batch = tiny_batch(model)
    expected = logits(model.eval(), batch)
    model.save_pretrained(tmp_path / "adapter")

    auto_cls = AutoPeftModelForSequenceClassification if task == "SEQ_CLS" else AutoPeftModelForCausalLM
    loaded = auto_cls.from_pretrained(tmp_path / "adapter")
    torch.testing.assert_close(logits(loaded.eval(), batch), expected)
    assert not any(p.requires_grad for p in loaded.parameters())  # PEFT's default: inference only

    resumed = PeftModel.from_pretrained(tiny_model(family, task=task), tmp_path / "adapter", is_trainable=True)
    assert {n for n, p in resumed.named_parameters() if p.requires_grad} == trained
    labels = batch["input_ids"] if task == "CAUSAL_LM" else torch.zeros(len(batch["input_ids"]), dtype=torch.long)
    resumed.train()(**batch, labels=labels).loss.backward()
    assert all(p.grad is not None for p in resumed.parameters() if p.requires_grad)


def test_saved_file_holds_cores_biases_norms_and_head_only(tmp_path):
    from safetensors.torch import load_file

    model = get_peft_model(tiny_model("deberta"), METHODS["adp"]("SEQ_CLS"))
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    # every trained tensor, plus (noise_reduction) the frozen initial cores it subtracts
    total = sum(v.numel() for k, v in saved.items() if "initial_cores" not in k)
    assert total == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert any("initial_cores" in k for k in saved)
    assert any("pooler.dense.cores" in k for k in saved)
    assert any("LayerNorm" in k for k in saved)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_peft_low_level_api_injects_and_round_trips_the_state_dict(method):
    """PEFT's wrapper-free API (inject_adapter_in_model / get_ / set_peft_model_state_dict), as
    custom trainers and diffusers-style code use it: same layers, same saved set, exact restore."""
    from peft import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict

    def injected(adapter_seed):
        base = tiny_model("llama", task="CAUSAL_LM")
        torch.manual_seed(adapter_seed)
        return inject_adapter_in_model(METHODS[method]("CAUSAL_LM"), base).eval()

    model = injected(adapter_seed=0)
    assert sum(isinstance(m, LAYER_CLS[method]) for m in model.modules()) > 0
    batch = tiny_batch(model)
    base_logits = logits(model, batch)
    perturb_trainable(model)
    adapted = logits(model, batch)
    assert not torch.allclose(base_logits, adapted)
    saved = get_peft_model_state_dict(model)
    assert any("layernorm" in k for k in saved) and not any("base_layer" in k for k in saved)

    other = injected(adapter_seed=1)  # other initial cores, all overwritten by the load
    assert not torch.allclose(logits(other, batch), adapted)
    result = set_peft_model_state_dict(other, saved)
    assert not result.unexpected_keys
    torch.testing.assert_close(logits(other, batch), adapted)


@pytest.mark.parametrize("family", ["llama", "bert", "roberta", "deberta", "bart"])
@pytest.mark.parametrize("method", ["adp", "rep"])
def test_disable_adapter_gives_the_base_model(family, method):
    """Also with a tensorized classification head: the pretrained hidden x hidden layer stays in the
    model as it was, the TT layer is the adapter's copy, so the base model (and a mixed batch's
    "__base__" rows) runs with the pretrained head."""
    task = default_task(family)
    base = tiny_model(family, task=task)
    batch = tiny_batch(base)
    before = logits(base, batch)
    model = get_peft_model(base, METHODS[method](task)).eval()
    perturb_trainable(model)
    adapted = logits(model, batch)
    assert not torch.allclose(adapted, before)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, batch), before, rtol=0, atol=0)
    torch.testing.assert_close(logits(model, batch), adapted)
    mixed = logits(model, {**batch, "adapter_names": ["__base__", "default"]})
    torch.testing.assert_close(mixed[0], before[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mixed[1], adapted[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_several_named_adapters(method):
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS[method]("CAUSAL_LM"))
    perturb_trainable(model, seed=1)
    batch = tiny_batch(model)
    first = logits(model, batch)
    model.add_adapter("second", METHODS[method]("CAUSAL_LM"))
    model.set_adapter("second")
    perturb_trainable(model, seed=2)
    second = logits(model, batch)
    assert not torch.allclose(first, second)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".second" in n for n in trainable if "loretta_" in n)
    model.set_adapter("default")
    torch.testing.assert_close(logits(model, batch), first)
    model.delete_adapter("second")
    torch.testing.assert_close(logits(model, batch), first)
    # nothing of the deleted adapter stays behind (LoRETTA_rep's factors put together for the model)
    held = [name for m in model.modules() for name in getattr(m, "_held_factors", {})]
    assert "second" not in held and (method == "adp" or "default" in held)
    assert not any("second" in getattr(m, "_activation_fn", {}) for m in model.modules())


@pytest.mark.parametrize("family", ["llama", "gpt2", "roberta", "deberta", "bert", "t5"])
@pytest.mark.parametrize("init", ["noise_reduction", "identity", "gaussian"])
def test_rep_merge_unmerge_and_merge_and_unload(family, init):
    task = default_task(family)
    model = get_peft_model(tiny_model(family, task=task), METHODS["rep"](task, init_method=init))
    perturb_trainable(model)
    batch = tiny_batch(model)
    unmerged = logits(model, batch)
    model.merge_adapter()
    torch.testing.assert_close(logits(model, batch), unmerged, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(logits(model, batch), unmerged, rtol=1e-5, atol=1e-5)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, (LorettaRepLayer, TTLinear)) for m in merged.modules())
    assert type(merged).__module__.startswith("transformers.")
    torch.testing.assert_close(logits(merged, batch), unmerged, rtol=1e-5, atol=1e-5)


def test_rep_merged_model_saves_as_a_stock_transformers_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = get_peft_model(tiny_model("roberta"), METHODS["rep"]("SEQ_CLS"))
    perturb_trainable(model)
    batch = tiny_batch(model)
    expected = logits(model, batch)
    model.merge_and_unload().save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, batch), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_unload_returns_the_base_architecture(method):
    base = tiny_model("llama", task="CAUSAL_LM")
    batch = tiny_batch(base)
    before = logits(base, batch)
    model = get_peft_model(base, METHODS[method]("CAUSAL_LM", trainable_layer_norms=False))
    perturb_trainable(model)
    plain = model.unload()
    assert not any(isinstance(m, (LorettaAdpLayer, LorettaRepLayer)) for m in plain.modules())
    torch.testing.assert_close(logits(plain, batch), before)


def test_adp_cannot_be_merged_with_a_clear_error():
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS["adp"]("CAUSAL_LM"))
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()


def test_layer_norm_and_head_flags():
    def trainable(**kw):
        model = get_peft_model(tiny_model("deberta"), METHODS["adp"]("SEQ_CLS", **kw))
        return {n for n, p in model.named_parameters() if p.requires_grad}

    default = trainable()
    assert any("LayerNorm" in n for n in default)
    assert any("pooler" in n and "cores" in n for n in default)
    no_norms = trainable(trainable_layer_norms=False)
    assert not any("LayerNorm" in n for n in no_norms)
    dense_head = trainable(tensorized_head=False)
    assert any(n.endswith("pooler.modules_to_save.default.dense.weight") for n in dense_head)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_deberta_v2_trains_the_norms_of_the_activations_not_of_the_relative_position_table(method):
    model = get_peft_model(tiny_model("deberta-v2"), METHODS[method]("SEQ_CLS"))
    trained_norms = {n.split(".modules_to_save")[0] for n, p in model.named_parameters()
                     if p.requires_grad and "LayerNorm" in n}
    layers = model.base_model.model.config.num_hidden_layers
    assert len(trained_norms) == 1 + 2 * layers  # the embeddings' and two per layer
    assert not any(n.endswith("deberta.encoder.LayerNorm") for n in trained_norms)
    encoder_norm = model.base_model.model.deberta.encoder.LayerNorm
    assert not any(p.requires_grad for p in encoder_norm.parameters())


def test_dense_adapters_baseline():
    model = get_peft_model(tiny_model("bert"), METHODS["adp"]("SEQ_CLS", tensorized=False, tensorized_head=False))
    layer = next(m for m in model.modules() if isinstance(m, LorettaAdpLayer))
    assert isinstance(layer.loretta_adp_down["default"], torch.nn.Linear)
    assert not any(isinstance(m, TTLinear) for m in model.modules())


def test_user_targets_on_an_unknown_family_and_errors_listing_linear_layers():
    from transformers import AutoConfig, AutoModelForCausalLM

    # Mamba: no attention, no preset
    cfg = AutoConfig.for_model("mamba", hidden_size=32, num_hidden_layers=1, vocab_size=100, state_size=4)
    # what to do first (the model's layer names), then the model types that have defaults
    message = (r"no default target modules for model_type 'mamba'\. Pass target_modules=\[\.\.\.\] chosen from "
               r"this model's linear layers: \[.*layers\.\*\.mixer\.in_proj.*\]\. The \d+ model types with "
               r"defaults: \[.*'llama'")
    with pytest.raises(ValueError, match=message):
        get_peft_model(AutoModelForCausalLM.from_config(cfg), LorettaAdpConfig(task_type="CAUSAL_LM"))
    model = get_peft_model(AutoModelForCausalLM.from_config(cfg),
                           LorettaAdpConfig(task_type="CAUSAL_LM", target_modules=["out_proj"], bottleneck_size=8))
    assert any(isinstance(m, LorettaAdpLayer) for m in model.modules())
    with pytest.raises(ValueError, match=r"matches none.*backbone\.layers\.\*\.mixer\.out_proj"):
        get_peft_model(AutoModelForCausalLM.from_config(cfg),
                       LorettaRepConfig(task_type="CAUSAL_LM", target_modules=["no_such_layer"]))


@pytest.mark.parametrize(("model_type", "extra"), [
    # hybrids without a preset: Mamba and attention layers (and experts), convolution and attention, Mamba and
    # attention side by side in each layer
    ("jamba", dict(num_experts=2, num_experts_per_tok=1, attn_layer_period=2, attn_layer_offset=1,
                   expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8, mamba_dt_rank=8,
                   use_mamba_kernels=False)),
    ("lfm2", dict()),
    ("falcon_h1", dict(mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1,
                       mamba_chunk_size=8)),
])
def test_hybrids_without_a_preset_train_with_user_targets(model_type, extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=128, vocab_size=100, pad_token_id=0, **extra)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_config(cfg),
                           LorettaRepConfig(task_type="CAUSAL_LM", target_modules=["out_proj", "o_proj"], r=4))
    assert len([m for m in model.modules() if isinstance(m, LorettaRepLayer)]) >= 2  # a Mamba / conv and an attention
    batch = tiny_batch(model)
    model.train()(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "cores" in n)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: LorettaAdpConfig(tensor_rank=0), "tensor_rank must be a positive integer, got 0"),
        (lambda: LorettaRepConfig(r=0), "r must be a positive integer, got 0"),
        (lambda: LorettaAdpConfig(non_linearity="relux"), "non_linearity 'relux' is not one of"),
        (lambda: LorettaAdpConfig(init_method="zeros"), r"init_method 'zeros' is not one of \['noise_reduction', 'identity', 'gaussian'\]"),
        (lambda: LorettaAdpConfig(bias="lora_only"), "bias 'lora_only' is not one of"),
        (lambda: LorettaRepConfig(tt_forward="dense"), r"tt_forward 'dense' is not one of \['auto', 'factors', 'matrix'\]"),
        (lambda: LorettaAdpConfig(adapter_dropout=1.5), "adapter_dropout must be in"),
        (lambda: LorettaAdpConfig(tt_shapes={"768x64": [8, 8]}), r"product 64.*768x64"),
        (lambda: LorettaAdpConfig(tt_shapes={"big": [8, 8]}), "tt_shapes key 'big' is invalid"),
        (lambda: LorettaAdpConfig(task_type="CLASSIFY"), "Invalid task type"),
        (lambda: LorettaAdpConfig(target_modules=5), "target_modules must be None, a regex string or a list of module names, got 5"),
        (lambda: LorettaRepConfig(exclude_modules=["q_proj", 3]), r"exclude_modules must be .*got \['q_proj', 3\]"),
        (lambda: LorettaAdpConfig(modules_to_save={"lm_head": 1}), r"modules_to_save must be a module name or a list of them"),
        (lambda: LorettaAdpConfig(input_side_modules=7), "input_side_modules must be a module name or a list of them, got 7"),
        (lambda: LorettaAdpConfig(tt_shapes={"64x8": [8, 8, 8], "64X8": [8, 8, 8]}), r"size 64x8 twice \(key '64X8'\)"),
    ],
)
def test_bad_config_values_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_one_module_name_given_as_a_string_is_a_list_of_one():
    """Not a list of its characters (a list of one-letter names would match nothing and train nothing)."""
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"),
                           METHODS["adp"]("CAUSAL_LM", modules_to_save="lm_head", input_side_modules="up_proj"))
    config = model.peft_config["default"]
    assert "lm_head" in config.modules_to_save and config.input_side_modules == ["up_proj"]
    assert any(n.startswith("base_model.model.lm_head.modules_to_save.default") and p.requires_grad
               for n, p in model.named_parameters())
    sides = {n.rsplit(".", 1)[-1]: m.side["default"] for n, m in model.named_modules() if isinstance(m, LorettaAdpLayer)}
    assert sides["up_proj"] == "input"


@pytest.mark.parametrize("tensorized_head", [True, False])
def test_a_module_to_save_inside_one_trained_whole_is_an_error(tensorized_head):
    """BERT's head `pooler` is trained whole: `pooler.dense` named too would get a copy of its own that the
    pooler's copy never runs (trainable parameters without gradients)."""
    with pytest.raises(ValueError, match=r"modules_to_save names bert\.pooler\.dense and bert\.pooler, which holds "
                                         r"it.*never run: name one of them"):
        get_peft_model(tiny_model("bert"), METHODS["rep"]("SEQ_CLS", modules_to_save=["pooler.dense"],
                                                           tensorized_head=tensorized_head))
    model = get_peft_model(tiny_model("bert"), METHODS["rep"]("SEQ_CLS", modules_to_save=["pooler"]))
    model.train()(**tiny_batch(model), labels=torch.tensor([0, 1])).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_target_that_is_not_a_linear_layer_is_named_with_the_linear_layers():
    with pytest.raises(ValueError, match=r"target_modules=\['mlp', 'q_proj'\] matches model\.layers\.0\.mlp \(LlamaMLP\).*"
                                         r"not a linear layer.*linear layers: \[.*model\.layers\.\*\.mlp\.up_proj"):
        get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS["rep"]("CAUSAL_LM", target_modules=["mlp", "q_proj"]))


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_the_mixed_batch_name_for_the_base_model_is_not_an_adapter_name(method):
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS[method]("CAUSAL_LM"))
    with pytest.raises(ValueError, match="adapter name '__base__' is reserved"):
        model.add_adapter("__base__", METHODS[method]("CAUSAL_LM"))
    assert list(model.peft_config) == ["default"]
    with pytest.raises(ValueError, match="adapter name '__base__' is reserved"):
        get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS[method]("CAUSAL_LM"), adapter_name="__base__")


def test_tt_shapes_keys_are_read_as_sizes_whatever_their_case():
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS["adp"]("CAUSAL_LM", tt_shapes={"8X064": [2, 4, 8, 8]}))
    assert model.peft_config["default"].tt_shapes == {"8x64": [2, 4, 8, 8]}
    assert {m.shape for m in model.modules() if isinstance(m, TTLinear) and m.in_features == 8} == {(2, 4, 8, 8)}


def test_explicit_tt_shape_is_used():
    model = get_peft_model(tiny_model("bert"), LorettaAdpConfig(task_type="SEQ_CLS", bottleneck_size=8, tensor_rank=2,
                                                                 tt_shapes={"64x8": [2, 2, 2, 2, 2, 2, 8]}))
    layer = next(m for m in model.modules() if isinstance(m, LorettaAdpLayer))
    assert layer.loretta_adp_down["default"].shape == (2, 2, 2, 2, 2, 2, 8)
    assert layer.loretta_adp_up["default"].shape == tuple(
        __import__("loretta").default_tt_shape(8, 64))


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_noise_reduction_sends_gradient_to_every_output_side_core_at_step_0(method):
    """The zero-core init only trains its zero core at first; noise reduction trains all of them."""
    def grads(init):
        model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS[method]("CAUSAL_LM", init_method=init))
        batch = tiny_batch(model)
        model(**batch, labels=batch["input_ids"]).loss.backward()
        key = "loretta_adp_up" if method == "adp" else "loretta_rep_B"
        return [p.grad.abs().sum().item() for n, p in model.named_parameters() if key in n and "cores" in n]

    zero_core = grads("identity")
    assert any(g == 0 for g in zero_core)
    assert all(g > 0 for g in grads("noise_reduction"))


@pytest.mark.parametrize("method, scale_kw, scales", [
    ("adp", "scaling", (1.0, 0.5, 3.0)),
    ("rep", "lora_alpha", (4, 2, 12)),  # r=4: scaling lora_alpha / r = 1.0, 0.5, 3.0
])
def test_the_update_is_scaled_as_configured(method, scale_kw, scales):
    """A layer's update (its output minus the base layer's) is proportional to the scaling."""
    def update(scale):
        torch.manual_seed(0)
        model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"),
                               METHODS[method]("CAUSAL_LM", init_method="gaussian", **{scale_kw: scale}))
        layer = next(m for m in model.modules() if isinstance(m, LAYER_CLS[method]))
        x = torch.randn(2, 5, layer.in_features, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            return layer(x) - layer.get_base_layer()(x)

    unit, *others = (update(s) for s in scales)
    assert unit.abs().max() > 0
    for value, scaled in zip((0.5, 3.0), others):
        torch.testing.assert_close(scaled, unit * value, rtol=1e-5, atol=1e-6)


def test_input_side_modules_that_match_no_adapted_layer_are_an_error():
    with pytest.raises(ValueError, match=r"input_side_modules \['gate_prj'\] match none of the layers LoRETTA_adp "
                                         r"adapts here: \[.*model\.layers\.\*\.mlp\.gate_proj"):
        get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS["adp"]("CAUSAL_LM", input_side_modules=["gate_prj"]))
    # a real name is used: that layer's adapter moves to the input side
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS["adp"]("CAUSAL_LM", input_side_modules=["up_proj"]))
    sides = {n.rsplit(".", 1)[-1]: m.side["default"] for n, m in model.named_modules() if isinstance(m, LorettaAdpLayer)}
    assert sides == {"gate_proj": "output", "up_proj": "input", "down_proj": "output"}


def test_tt_shapes_for_sizes_the_model_lacks_are_named_in_a_warning():
    shapes = {"8x64": [2, 4, 8, 8], "4096x64": [16, 16, 16, 4, 4, 4]}  # tiny llama: hidden 64, bottleneck 8
    with pytest.warns(UserWarning, match=r"tt_shapes \['4096x64'\] match no TT layer of this model.*'64x8', '8x64'"):
        model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), METHODS["adp"]("CAUSAL_LM", tt_shapes=shapes))
    assert {m.shape for m in model.modules() if isinstance(m, TTLinear) and m.in_features == 8} == {(2, 4, 8, 8)}
