"""Generation with PEFT's prefix and prompt tuning, as the runner builds them: every new token's
scores are the teacher-forced logits of the model that training optimises (virtual tokens used
once, at the start). On transformers 5.24 with PEFT 0.21 they were not (loretta/experiment/peft_generation.py)."""

from __future__ import annotations

import pytest
import torch

from .helpers import compose

CASES = [(model, method) for model in ("tiny-llama", "tiny-t5") for method in ("prefix", "prompt")]
NEW = 5


def _trained_looking(model_name: str, method: str):
    """The runner's model with the method applied, its virtual tokens far from their initialisation."""
    from loretta.experiment import methods, models

    cfg = compose([f"model={model_name}", f"method={method}"])
    torch.manual_seed(0)
    loaded = models.load(cfg.model)
    target = methods.Target(family=loaded.family, model_type=loaded.model_type)
    model = methods.apply(loaded.model, cfg.method, target).eval()
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.copy_(torch.randn_like(p) * 3)
    return model, loaded.tokenizer


@pytest.mark.parametrize("model_name,method", CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_generation_scores_are_the_teacher_forced_logits(model_name, method):
    model, tok = _trained_looking(model_name, method)
    enc = tok(["The capital of France is", "Add two and two, get one"], return_tensors="pt")  # no padding
    assert enc["attention_mask"].all()
    out = model.generate(**enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, output_scores=True,
                         return_dict_in_generate=True)
    with torch.no_grad():
        if model_name == "tiny-t5":
            logits = model(**enc, decoder_input_ids=out.sequences[:, :-1]).logits
        else:
            seq = out.sequences[:, :-1]
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits
    logits = logits[:, -NEW:].clone()
    logits[..., tok.eos_token_id] = float("-inf")  # min_new_tokens: end-of-sequence is not allowed yet
    scores = torch.stack(out.scores, dim=1)
    finite = torch.isfinite(logits)
    assert torch.equal(finite, torch.isfinite(scores))
    torch.testing.assert_close(scores[finite], logits[finite], rtol=1e-4, atol=1e-4)
