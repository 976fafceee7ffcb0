"""Encoder-decoder models (T5, BART) in the runner: every method on every prompted kind of task, and
the recipes' tensors checked against the model's own loss."""

from __future__ import annotations

import math

import pytest
import torch

from .helpers import compose, read_results, run

METHODS = ["lora", "ia3", "prompt", "prefix", "bitfit", "ft", "adapters", "loretta_adp", "loretta_rep"]
KINDS = ["classification", "multiple_choice", "generation"]
CASES = [(m, k) for m in METHODS for k in KINDS]


@pytest.mark.parametrize("method,kind", CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_method_on_kind(method, kind, kinds, tmp_path):
    task, data_dir, extra = kinds[kind]
    model = "tiny-bart" if method == "bitfit" else "tiny-t5"  # T5 has no biases
    record = run([f"model={model}", f"task={task}", f"method={method}", f"task.data_dir={data_dir}", *extra], tmp_path)
    assert record["status"] == "completed"
    assert all(math.isfinite(v) for v in record["metrics"].values())
    assert 0 < record["trainable_params"] <= record["total_params"]
    if method != "ft":
        assert record["trainable_params"] < record["total_params"] / 2
    assert read_results(tmp_path / task / model / method / "seed0")["metrics"] == record["metrics"]


def test_bitfit_on_t5_says_there_is_no_bias(kinds, tmp_path):
    from loretta.experiment.checks import ConfigError

    task, data_dir, _ = kinds["classification"]
    with pytest.raises(ConfigError, match="no bias to train"):
        run(["model=tiny-t5", f"task={task}", "method=bitfit", f"task.data_dir={data_dir}"], tmp_path)


def _setup(kind, kinds, model="tiny-t5"):
    from loretta.experiment import data, models
    from tasks import get_task, load_splits

    task, data_dir, extra = kinds[kind]
    cfg = compose([f"model={model}", f"task={task}", *extra])
    spec = get_task(task)
    splits = load_splits(spec, protocol=cfg.train.protocol, data_dir=str(data_dir), seed=0, num_train=4,
                         num_dev=4, num_test=4, split_validation=None)
    torch.manual_seed(0)
    loaded = models.load(cfg.model)
    return spec, splits["train"], loaded, data.recipe_for("seq2seq", spec, cfg.task.objective)


@pytest.mark.parametrize("kind", ["classification", "multiple_choice"])
def test_candidate_scores_are_the_models_own_likelihoods(kind, kinds):
    """Each candidate's score is minus the model's own mean token loss on it as the decoder target,
    end-of-sequence included; the gold candidate is the one trained on."""
    from loretta.experiment import data

    spec, examples, loaded, recipe = _setup(kind, kinds)
    tok, model = loaded.tokenizer, loaded.model.eval()
    features = data.encode_seq2seq_candidates(spec, examples, tok, 64)
    batch = data.collate_seq2seq_candidates(features, tok)
    with torch.no_grad():
        scores = data.seq2seq_candidate_scores(model, batch)
        for i, f in enumerate(features):
            for j, target in enumerate(f["targets"]):
                assert target[-1] == tok.eos_token_id
                out = model(input_ids=torch.tensor([f["source"]]), labels=torch.tensor([target]))
                assert scores[i, j].item() == pytest.approx(-out.loss.item(), abs=1e-5)
            assert torch.isinf(scores[i, len(f["targets"]):]).all()
    lm = {"classification": "seq2seq_candidates", "multiple_choice": "seq2seq_lm_candidates"}[kind]
    assert recipe.name == lm
    if kind == "multiple_choice":  # trained with the LM loss on the gold candidate
        trained = data.encode_seq2seq_lm(spec, examples, tok, 64)
        assert [t["labels"] for t in trained] == [f["targets"][f["gold"]] for f in features]


def test_generation_targets_and_decoding(kinds):
    """SQuAD: the decoder learns the stripped answer then end-of-sequence; decoding returns the
    decoder's text alone (no prompt to cut), up to end-of-sequence."""
    from loretta.experiment import data
    from loretta.experiment.loop import EvalContext

    spec, examples, loaded, recipe = _setup("generation", kinds)
    tok, model = loaded.tokenizer, loaded.model.eval()
    assert recipe.name == "seq2seq_generate"
    trained = data.encode_seq2seq_lm(spec, examples, tok, 64)
    prompts = [spec.prompt(ex) for ex in examples]
    for feature, p in zip(trained, prompts):
        assert tok.decode(feature["labels"]) == p.answers[0] + tok.eos_token
        assert len(feature["input_ids"]) <= 64
    batch = data.collate_seq2seq_generate(data.encode_seq2seq_generate(spec, examples, tok, 64), tok)
    assert (batch["attention_mask"][:, 0] == 1).all()  # right-padded: the encoder sees no pad first
    ctx = EvalContext(tokenizer=tok, max_new_tokens=5, unwrap=lambda m: m)
    predictions, loss = data.predict_seq2seq_generate(model, batch, ctx)
    assert loss is None and len(predictions) == len(examples)
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert predictions == [t.split("\n")[0].strip() for t in tok.batch_decode(out, skip_special_tokens=True)]


def test_encoder_only_task_needs_an_encoder(kinds):
    from loretta.experiment import data
    from loretta.experiment.checks import ConfigError
    from tasks import get_task

    spec = get_task("stsb")
    with pytest.raises(ConfigError, match="stsb.*use an encoder model"):
        data.recipe_for("seq2seq", spec)
