"""Pieces of the runner checked on their own: the encoder prefix, candidate scoring, the tiny tokenizer."""

from __future__ import annotations

import pytest
import torch

from .helpers import compose


def _tiny(name: str, num_labels: int | None = 2):
    from loretta.experiment import models

    torch.manual_seed(0)
    return models.load(compose([f"model={name}"]).model, num_labels=num_labels)


def test_encoder_prefix_sees_through_padding_and_trains():
    from loretta.experiment.prefix import add_encoder_prefix

    loaded = _tiny("tiny-bert")
    model, tok = loaded.model.eval(), loaded.tokenizer

    def last_hidden(texts):  # (batch, tokens, hidden) of the encoder's last layer
        return model(**tok(texts, padding=True, return_tensors="pt"), output_hidden_states=True).hidden_states[-1]

    before = last_hidden(["a fine film"])
    prefix = add_encoder_prefix(model, num_virtual_tokens=3, init_std=0.5)
    alone = last_hidden(["a fine film"])
    padded = last_hidden(["a fine film", "a much longer sentence than the first one"])[:1, :alone.shape[1]]
    assert not torch.allclose(alone, before, atol=1e-3)  # the prefix is used
    assert torch.allclose(alone, padded, atol=1e-5)  # padding stays masked, the prefix is not
    model(**tok(["a fine film"], return_tensors="pt")).logits.sum().backward()
    assert prefix.keys.grad is not None and prefix.keys.grad.abs().sum() > 0


def test_encoder_prefix_refuses_unsupported_attention():
    from loretta.experiment import ConfigError
    from loretta.experiment.prefix import add_encoder_prefix

    with pytest.raises(ConfigError, match="deberta.*bert, roberta"):
        add_encoder_prefix(_tiny("tiny-deberta").model, 3, 0.02)


def test_candidate_scores_are_mean_log_probabilities():
    from loretta.experiment import data
    from tasks import Example, get_task

    loaded = _tiny("tiny-llama", None)
    model, tok = loaded.model.eval(), loaded.tokenizer
    spec = get_task("sst2")
    examples = [Example(fields={"sentence": "a gripping, funny film"}, label=1),
                Example(fields={"sentence": "dull"}, label=0)]
    features = data.encode_candidates(spec, examples, tok, max_length=64)
    batch = data.collate_candidates(features, tok)
    with torch.no_grad():
        scores = data.candidate_scores(model, batch)
        for i, f in enumerate(features):
            for j, (ids, start) in enumerate(zip(f["seqs"], f["starts"])):
                logp = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
                token_logp = logp[torch.arange(start - 1, len(ids) - 1), torch.tensor(ids[start:])]
                assert torch.allclose(scores[i, j], token_logp.mean(), atol=1e-5)
    assert scores.shape == (2, 2)
    prompt = spec.prompt(examples[0])
    assert tok.decode(features[0]["seqs"][1][features[0]["starts"][1]:]) == prompt.candidates[1]


def test_byte_tokenizer_round_trips():
    from loretta.experiment.models import byte_tokenizer

    tok = byte_tokenizer()
    text = "Ünïcödé answer: 42 —\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 1 + len(text.encode())
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_wandb_mode(monkeypatch):
    from loretta.experiment import ConfigError
    from loretta.experiment.logging import resolve_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("on") == "off"  # the environment wins (the tests run like this)
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode(True) == "offline"  # on, but no key: offline
    assert resolve_mode("offline") == "offline" and resolve_mode("off") == resolve_mode(False) == "off"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("on") == "online"
    with pytest.raises(ConfigError, match="maybe.*on, offline, off"):
        resolve_mode("maybe")


def test_only_training_prompts_keep_the_answer_in_a_cut_context():
    """Choosing the kept window of a long SQuAD context by the gold answer is fine for training, a leak
    for evaluation: eval features must not depend on where the answer is."""
    from loretta.experiment import data
    from tasks import Example, get_task

    tok = _tiny("tiny-llama", None).tokenizer
    spec = get_task("squad")
    filler = " ".join(f"word{i}" for i in range(400))
    ex = Example(fields={"title": "T", "context": filler + " The answer is zebracorn.", "question": "What is it?"},
                 answers=["zebracorn"])
    decode = lambda ids: tok.decode(ids)  # noqa: E731
    train = data.encode_lm(spec, [ex], tok, max_length=200, keep_answer=True)[0]
    evaluated = data.encode_generate(spec, [ex], tok, max_length=200)[0]
    assert "zebracorn" in decode(train["input_ids"])  # training keeps the window around the answer
    assert "zebracorn" not in decode(evaluated["input_ids"])  # evaluation does not look at the answer
    leaky = data.encode_generate(spec, [ex], tok, max_length=200, keep_answer=True)[0]
    assert "zebracorn" in decode(leaky["input_ids"])  # (what the loop must not do)
