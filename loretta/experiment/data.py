"""Tasks' examples -> tensors, and the loss and predictions of each way of pairing a model with a task.

A `Recipe` bundles how one kind of run turns examples into features, batches them, computes the
training loss and predicts:

  encoder        encoder + classification/regression task: (text, pair) through the tokenizer, the
                 model's own loss (cross-entropy or MSE), argmax or the regression value.
  candidates     decoder, trained with cross-entropy over candidate scores: every candidate is
                 context + continuation; its score is the mean log-probability of its tokens (a mask
                 marks them); the prediction is the best candidate (MeZO's classification).
  lm_candidates  decoder, trained with the LM loss on the gold continuation, predicting by candidate
                 scores (COPA, ReCoRD).
  lm_generate    decoder, trained with the LM loss on the answer (" answer\\n"), predicting by greedy
                 decoding that stops at a newline (SQuAD, DROP).
  seq2seq_*      encoder-decoder (T5, BART): the same three, with the prompt's context as the encoder's
                 input and the continuation (stripped, then end-of-sequence) as the decoder's target.

Losses are means: `loss` over the batch's examples (encoder, candidates) or over its target tokens (the
LM loss), `loss_weight` says how many of them a batch holds, so that micro-batches of an accumulated step
weigh as in one big batch. `example_losses` are each example's own loss (its `loss` as a batch of one):
the dev loss is their mean, whatever the batch size.

Features are plain dicts of lists; `collate_*` pads them into tensors. Decoder contexts that are too
long are first shortened by the task (`spec.fit_prompt`, which keeps the answer in view for training only), then
truncated from the left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .checks import ConfigError


@dataclass(frozen=True)
class Recipe:
    name: str
    encode_train: Callable  # (spec, examples, tokenizer, max_length, keep_answer) -> features for the loss
    collate_train: Callable  # (features, tokenizer) -> batch
    loss: Callable  # (model, batch) -> scalar tensor, a mean (see loss_weight)
    encode_eval: Callable  # (spec, examples, tokenizer, max_length) -> features for predictions
    collate_eval: Callable
    predict: Callable  # (model, batch, ctx) -> (predictions list, example_losses of the batch or None)
    loss_weight: Callable  # (train batch) -> what `loss` is a mean over: its examples with a gold, or target tokens
    example_losses: Callable  # (model, train batch) -> (examples,) each one's loss alone; NaN without a gold


def recipe_for(family: str, spec, objective: str = "auto") -> Recipe:
    """The recipe for a model family and a task (`objective`: auto | candidates | lm). An objective that
    cannot apply is an error, not ignored: the run would record a choice it did not train with."""
    if family == "encoder":
        if not spec.supports_encoder:
            raise ConfigError(f"task {spec.name!r} has no encoder (sequence classification) form; use a decoder "
                              f"model (e.g. model=smollm2 or model=llama2-7b)")
        if objective != "auto":
            raise ConfigError(f"task.objective={objective!r} applies to decoder and seq2seq models only: an "
                              f"encoder trains its classification head with the model's own loss; set "
                              f"task.objective=auto")
        return RECIPES["encoder"]
    if not spec.supports_decoder:
        raise ConfigError(f"task {spec.name!r} has no prompt (its examples are pairs for a classification head); "
                          f"use an encoder model (e.g. model=minilm)")
    prefix = "seq2seq_" if family == "seq2seq" else ""
    if spec.kind == "generation":
        if objective == "candidates":
            raise ConfigError(f"task.objective='candidates': task {spec.name!r} is a generation task, with no "
                              f"candidates to score; it trains with the LM loss on the answer (task.objective="
                              f"auto or lm)")
        return RECIPES[f"{prefix}generate" if prefix else "lm_generate"]
    if objective == "auto":
        objective = "candidates" if spec.kind == "classification" else "lm"
    return RECIPES[prefix + ("candidates" if objective == "candidates" else "lm_candidates")]


# -- encoder -------------------------------------------------------------------------------------


def encode_encoder(spec, examples, tokenizer, max_length, keep_answer=False):
    pairs = [spec.encoder_inputs(ex) for ex in examples]
    first = [a for a, _ in pairs]
    second = [b for _, b in pairs]
    has_pair = any(b is not None for b in second)
    enc = tokenizer(first, second if has_pair else None, truncation=True, max_length=max_length)
    features = []
    for i, ex in enumerate(examples):
        feature = {k: enc[k][i] for k in enc.keys()}
        feature["labels"] = spec.encoder_label(ex)
        features.append(feature)
    return features


def collate_encoder(features, tokenizer):
    labels = [f["labels"] for f in features]
    batch = tokenizer.pad([{k: v for k, v in f.items() if k != "labels"} for f in features], return_tensors="pt")
    batch = dict(batch)
    batch["labels"] = torch.tensor(labels, dtype=torch.float if isinstance(labels[0], float) else torch.long)
    return batch


def loss_encoder(model, batch):
    return model(**batch).loss


def _encoder_losses(logits, labels):
    """Each example's share of the model's own loss: squared error for one output (regression), else
    cross-entropy."""
    logits = logits.float()
    if logits.shape[-1] == 1:
        return (logits.squeeze(-1) - labels.float()) ** 2
    return F.cross_entropy(logits, labels, reduction="none")


def example_losses_encoder(model, batch):
    return _encoder_losses(model(**batch).logits, batch["labels"])


def predict_encoder(model, batch, ctx):
    logits = model(**batch).logits.float()
    preds = logits.squeeze(-1).tolist() if logits.shape[-1] == 1 else logits.argmax(-1).tolist()
    return preds, _encoder_losses(logits, batch["labels"])


def examples_in(batch):
    return batch["labels"].shape[0]


# -- decoder: prompts ----------------------------------------------------------------------------


def _prompts(spec, examples, tokenizer, max_length, keep_answer):
    """Prompts cut to fit. Only training may keep the gold answer in the kept window: choosing the window
    by the answer when evaluating would leak it (SQuAD, DROP, ReCoRD contexts)."""
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    return [spec.fit_prompt(ex, max_length, count_tokens=count, keep_answer=keep_answer) for ex in examples]


def _ids(tokenizer, text, special: bool):
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _join(context_ids, continuation_ids, max_length):
    """context + continuation, the context cut from the left to fit; -> (ids, continuation start)."""
    keep = max(max_length - len(continuation_ids), 1)
    context_ids = context_ids[-keep:]
    ids = (context_ids + continuation_ids)[:max_length]
    return ids, len(context_ids)


def encode_candidates(spec, examples, tokenizer, max_length, keep_answer=False):
    """One feature per example: its candidate sequences and where each continuation starts."""
    features = []
    for ex, p in zip(examples, _prompts(spec, examples, tokenizer, max_length, keep_answer)):
        context = _ids(tokenizer, p.context, True)
        seqs, starts = [], []
        for cand in p.candidates:
            ids, start = _join(context, _ids(tokenizer, cand, False), max_length)
            seqs.append(ids)
            starts.append(start)
        features.append({"seqs": seqs, "starts": starts, "gold": -100 if p.gold is None else p.gold})
    return features


def _pad(rows, value, left=False):
    width = max(len(r) for r in rows)
    return torch.tensor([([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows])


def collate_candidates(features, tokenizer):
    seqs, owner, slot, mask_rows = [], [], [], []
    for i, f in enumerate(features):
        for j, (ids, start) in enumerate(zip(f["seqs"], f["starts"])):
            seqs.append(ids)
            owner.append(i)
            slot.append(j)
            mask_rows.append([0] * start + [1] * (len(ids) - start))
    return {
        "input_ids": _pad(seqs, tokenizer.pad_token_id),
        "attention_mask": _pad([[1] * len(s) for s in seqs], 0),
        "candidate_mask": _pad(mask_rows, 0),
        "owner": torch.tensor(owner),  # the example of each sequence
        "slot": torch.tensor(slot),  # its candidate index
        "gold": torch.tensor([f["gold"] for f in features]),
    }


def candidate_scores(model, batch):
    """(examples, max candidates) mean log-probabilities of each candidate's tokens (-inf where none)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, -batch["input_ids"].shape[1]:]  # prompt tuning returns its virtual tokens' logits too
    mask = batch["candidate_mask"][:, 1:].bool()  # token t is predicted at position t-1
    rows, cols = mask.nonzero(as_tuple=True)
    picked = logits[:, :-1][rows, cols].float().log_softmax(-1)
    token_logp = picked.gather(-1, batch["input_ids"][:, 1:][rows, cols].unsqueeze(-1)).squeeze(-1)
    return _by_example(token_logp, rows, mask, batch)


def _by_example(token_logp, rows, mask, batch):
    """Token log-probabilities (of sequence `rows`) -> (examples, max candidates) mean per candidate."""
    seq_score = torch.zeros(mask.shape[0], device=token_logp.device).index_add(0, rows, token_logp)
    seq_score = seq_score / mask.sum(1).clamp(min=1)
    owner, slot = batch["owner"], batch["slot"]
    scores = torch.full((batch["gold"].shape[0], int(slot.max()) + 1), float("-inf"), device=token_logp.device)
    scores[owner, slot] = seq_score
    return scores


def loss_candidates(model, batch):
    return F.cross_entropy(candidate_scores(model, batch), batch["gold"])


def _candidate_losses(scores, gold):
    losses = F.cross_entropy(scores, gold.clamp(min=0), reduction="none")
    return torch.where(gold >= 0, losses, torch.nan)


def example_losses_candidates(model, batch, scores_of=candidate_scores):
    return _candidate_losses(scores_of(model, batch), batch["gold"])


def predict_candidates(model, batch, ctx, scores_of=candidate_scores):
    scores = scores_of(model, batch)
    return scores.argmax(-1).tolist(), _candidate_losses(scores, batch["gold"])


def golds_in(batch):
    return int((batch["gold"] >= 0).sum())  # cross_entropy leaves out the -100 ones


# -- decoder: LM loss on the answer, greedy generation -------------------------------------------


def encode_lm(spec, examples, tokenizer, max_length, keep_answer=False):
    """context + target (the gold candidate, or " answer\\n"), labels only on the target's tokens."""
    features = []
    for p in _prompts(spec, examples, tokenizer, max_length, keep_answer):
        if p.target is None:
            continue  # no gold to learn from
        ids, start = _join(_ids(tokenizer, p.context, True), _ids(tokenizer, p.target, False), max_length)
        features.append({"input_ids": ids, "labels": [-100] * start + ids[start:]})
    return features


def collate_lm(features, tokenizer):
    ids = [f["input_ids"] for f in features]
    return {
        "input_ids": _pad(ids, tokenizer.pad_token_id),
        "attention_mask": _pad([[1] * len(i) for i in ids], 0),
        "labels": _pad([f["labels"] for f in features], -100),
    }


def loss_lm(model, batch):
    return model(**batch).loss


def _token_means(logits, labels):
    """(examples,) mean cross-entropy of each row's labelled tokens (`logits[i, t]` predicts `labels[i, t]`)."""
    mask = labels != -100
    rows, cols = mask.nonzero(as_tuple=True)
    token_loss = F.cross_entropy(logits[rows, cols].float(), labels[rows, cols], reduction="none")
    sums = torch.zeros(labels.shape[0], device=token_loss.device).index_add(0, rows, token_loss)
    counts = mask.sum(1)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.nan)


def example_losses_lm(model, batch):
    labels = batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, -labels.shape[1]:]  # prompt tuning returns its virtual tokens' logits too
    return _token_means(logits[:, :-1], labels[:, 1:])  # token t is predicted at position t-1


def targets_in(batch):
    return int((batch["labels"][:, 1:] != -100).sum())  # the tokens the shifted LM loss averages over


def encode_generate(spec, examples, tokenizer, max_length, keep_answer=False):
    return [{"input_ids": _join(_ids(tokenizer, p.context, True), [], max_length)[0]}
            for p in _prompts(spec, examples, tokenizer, max_length, keep_answer)]


def collate_generate(features, tokenizer):
    ids = [f["input_ids"] for f in features]
    return {"input_ids": _pad(ids, tokenizer.pad_token_id, left=True),
            "attention_mask": _pad([[1] * len(i) for i in ids], 0, left=True)}


def predict_generate(model, batch, ctx):
    """Greedy decoding; the answer is the text before the first newline."""
    out = ctx.unwrap(model).generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=ctx.max_new_tokens,
        do_sample=False, pad_token_id=ctx.tokenizer.pad_token_id, stop_strings=["\n"], tokenizer=ctx.tokenizer,
        synced_gpus=ctx.synced_gpus)
    new = out[:, batch["input_ids"].shape[1]:]
    texts = ctx.tokenizer.batch_decode(new, skip_special_tokens=True)
    return [t.split("\n")[0].strip() for t in texts], None


# -- encoder-decoder: the context is the encoder's input, the continuation the decoder's target ------
#
# Targets are stripped and end with end-of-sequence, as T5 and BART were trained (the decoder starts
# fresh, so a decoder prompt's leading space has nothing to separate, and T5's vocabulary has no
# newline to stop at): generation stops at end-of-sequence. Candidates are scored the same way
# (mean log-probability of their tokens and the end-of-sequence), so training and scoring agree.


def _source(tokenizer, context, max_length):
    return _ids(tokenizer, context, True)[-max_length:]  # cut from the left: the question is at the end


def _target(tokenizer, text, max_length):
    return (_ids(tokenizer, text.strip(), False) + [tokenizer.eos_token_id])[-max_length:]


def encode_seq2seq_candidates(spec, examples, tokenizer, max_length, keep_answer=False):
    """One feature per example: its encoder input, and each candidate as a decoder target."""
    features = []
    for p in _prompts(spec, examples, tokenizer, max_length, keep_answer):
        features.append({"source": _source(tokenizer, p.context, max_length),
                         "targets": [_target(tokenizer, c, max_length) for c in p.candidates],
                         "gold": -100 if p.gold is None else p.gold})
    return features


def collate_seq2seq_candidates(features, tokenizer):
    sources, targets, owner, slot = [], [], [], []
    for i, f in enumerate(features):
        for j, target in enumerate(f["targets"]):
            sources.append(f["source"])
            targets.append(target)
            owner.append(i)
            slot.append(j)
    return {"input_ids": _pad(sources, tokenizer.pad_token_id),
            "attention_mask": _pad([[1] * len(s) for s in sources], 0),
            "labels": _pad(targets, -100),
            "owner": torch.tensor(owner), "slot": torch.tensor(slot),
            "gold": torch.tensor([f["gold"] for f in features])}


def seq2seq_candidate_scores(model, batch):
    """As `candidate_scores`, each candidate being a decoder target (the model shifts it right itself)."""
    labels = batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
    mask = labels >= 0
    rows, cols = mask.nonzero(as_tuple=True)
    picked = logits[rows, cols].float().log_softmax(-1)
    token_logp = picked.gather(-1, labels[rows, cols].unsqueeze(-1)).squeeze(-1)
    return _by_example(token_logp, rows, mask, batch)


def loss_seq2seq_candidates(model, batch):
    return F.cross_entropy(seq2seq_candidate_scores(model, batch), batch["gold"])


def example_losses_seq2seq_candidates(model, batch):
    return example_losses_candidates(model, batch, scores_of=seq2seq_candidate_scores)


def predict_seq2seq_candidates(model, batch, ctx):
    return predict_candidates(model, batch, ctx, scores_of=seq2seq_candidate_scores)


def encode_seq2seq_lm(spec, examples, tokenizer, max_length, keep_answer=False):
    """Encoder input and decoder target (the gold candidate, or the answer) for the model's own loss."""
    return [{"input_ids": _source(tokenizer, p.context, max_length), "labels": _target(tokenizer, p.target, max_length)}
            for p in _prompts(spec, examples, tokenizer, max_length, keep_answer) if p.target is not None]


def collate_seq2seq_lm(features, tokenizer):
    ids = [f["input_ids"] for f in features]
    return {"input_ids": _pad(ids, tokenizer.pad_token_id),
            "attention_mask": _pad([[1] * len(i) for i in ids], 0),
            "labels": _pad([f["labels"] for f in features], -100)}


def example_losses_seq2seq_lm(model, batch):
    labels = batch["labels"]  # the model shifts them right into the decoder's input
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
    return _token_means(logits, labels)


def seq2seq_targets_in(batch):
    return int((batch["labels"] != -100).sum())


def encode_seq2seq_generate(spec, examples, tokenizer, max_length, keep_answer=False):
    return [{"input_ids": _source(tokenizer, p.context, max_length)}
            for p in _prompts(spec, examples, tokenizer, max_length, keep_answer)]


def collate_seq2seq_generate(features, tokenizer):
    ids = [f["input_ids"] for f in features]
    return {"input_ids": _pad(ids, tokenizer.pad_token_id), "attention_mask": _pad([[1] * len(i) for i in ids], 0)}


def predict_seq2seq_generate(model, batch, ctx):
    """Greedy decoding to end-of-sequence; the output is the decoder's alone (no prompt to cut off)."""
    out = ctx.unwrap(model).generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=ctx.max_new_tokens,
        do_sample=False, synced_gpus=ctx.synced_gpus)
    texts = ctx.tokenizer.batch_decode(out, skip_special_tokens=True)
    return [t.split("\n")[0].strip() for t in texts], None


RECIPES = {
    "encoder": Recipe("encoder", encode_encoder, collate_encoder, loss_encoder,
                      encode_encoder, collate_encoder, predict_encoder, examples_in, example_losses_encoder),
    "candidates": Recipe("candidates", encode_candidates, collate_candidates, loss_candidates,
                         encode_candidates, collate_candidates, predict_candidates, golds_in,
                         example_losses_candidates),
    "lm_candidates": Recipe("lm_candidates", encode_lm, collate_lm, loss_lm,  # dev loss: the LM loss, not CE
                            encode_candidates, collate_candidates, lambda m, b, c: (predict_candidates(m, b, c)[0], None),
                            targets_in, example_losses_lm),
    "lm_generate": Recipe("lm_generate", encode_lm, collate_lm, loss_lm,
                          encode_generate, collate_generate, predict_generate, targets_in, example_losses_lm),
    "seq2seq_candidates": Recipe("seq2seq_candidates", encode_seq2seq_candidates, collate_seq2seq_candidates,
                                 loss_seq2seq_candidates, encode_seq2seq_candidates, collate_seq2seq_candidates,
                                 predict_seq2seq_candidates, golds_in, example_losses_seq2seq_candidates),
    "seq2seq_lm_candidates": Recipe("seq2seq_lm_candidates", encode_seq2seq_lm, collate_seq2seq_lm, loss_lm,
                                    encode_seq2seq_candidates, collate_seq2seq_candidates,
                                    lambda m, b, c: (predict_seq2seq_candidates(m, b, c)[0], None),
                                    seq2seq_targets_in, example_losses_seq2seq_lm),
    "seq2seq_generate": Recipe("seq2seq_generate", encode_seq2seq_lm, collate_seq2seq_lm, loss_lm,
                               encode_seq2seq_generate, collate_seq2seq_generate, predict_seq2seq_generate,
                               seq2seq_targets_in, example_losses_seq2seq_lm),
}
