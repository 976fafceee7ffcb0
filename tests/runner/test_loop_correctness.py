"""The training loop's numbers checked against independent computations: what each optimizer step's
gradient and learning rate are (a big batch and transformers' formula, written out here), how often
the loop steps and evaluates, that every dev example is scored once by the model alone and the dev loss
is a mean over examples (also across two processes), which weights are the best and scored on test,
bf16, a resume in mid-epoch, the timing, memory and parameter counts of the record, and encoder-decoders
that fit tasks they can learn."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from .helpers import run

NO_DROPOUT = ["++model.config.hidden_dropout_prob=0.0", "++model.config.attention_probs_dropout_prob=0.0",
              "method.lora_dropout=0.0"]  # so that a forward pass here repeats the loop's exactly


@dataclasses.dataclass
class Recorded:
    """What a run did, seen from outside: its model, each optimizer step (the parameters before it,
    their gradients as the optimizer got them, its learning rate and the micro-batches it was
    accumulated from), and each call of the task's metrics (predictions and examples)."""

    model: object = None
    steps: list = dataclasses.field(default_factory=list)
    micro: list = dataclasses.field(default_factory=list)
    scored: list = dataclasses.field(default_factory=list)


def record(monkeypatch) -> Recorded:
    import tasks
    from loretta.experiment import data, methods

    seen = Recorded()
    apply, recipe_for, get_task = methods.apply, data.recipe_for, tasks.get_task

    def apply_and_keep(*args, **kwargs):
        seen.model = apply(*args, **kwargs)
        return seen.model

    def recording_recipe(*args, **kwargs):
        recipe = recipe_for(*args, **kwargs)

        def loss(model, batch):
            if model.training:
                seen.micro.append({k: v.clone() for k, v in batch.items()})
            return recipe.loss(model, batch)
        return dataclasses.replace(recipe, loss=loss)

    def recording_task(name):
        spec = get_task(name)

        def metrics(predictions, examples):
            seen.scored.append((list(predictions), list(examples)))
            return spec.metrics(predictions, examples)
        return dataclasses.replace(spec, metrics=metrics)

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            seen.steps.append({"lr": self.param_groups[0]["lr"], "params": [p.detach().clone() for p in params],
                               "grads": [p.grad.detach().clone() for p in params], "batches": seen.micro[:]})
            seen.micro.clear()
            return super().step(closure)

    monkeypatch.setattr(methods, "apply", apply_and_keep)
    monkeypatch.setattr(data, "recipe_for", recording_recipe)
    monkeypatch.setattr(tasks, "get_task", recording_task)
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    return seen


def concat(batches: list[dict]) -> dict:
    """Micro-batches as one batch (right padding: pad id 0 for both tiny tokenizers, labels -100)."""
    out = {}
    for key in batches[0]:
        rows = [b[key] for b in batches]
        if rows[0].dim() == 2:
            width = max(r.shape[1] for r in rows)
            rows = [F.pad(r, (0, width - r.shape[1]), value=-100 if key == "labels" else 0) for r in rows]
        out[key] = torch.cat(rows)
    return out


def big_batch_gradients(model, step: dict, max_grad_norm: float = 0.0) -> list[torch.Tensor]:
    """The gradient of the model's own loss on the step's micro-batches taken as one batch, at the
    step's parameters (the loss is then a mean over all its examples, or over all its target tokens)."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p, value in zip(params, step["params"]):
            p.copy_(value)
    model.zero_grad(set_to_none=True)
    model(**concat(step["batches"])).loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    return [p.grad.clone() for p in params]


def relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    flat = lambda tensors: torch.cat([t.flatten().double() for t in tensors])  # noqa: E731
    return (torch.linalg.vector_norm(flat(got) - flat(want)) / torch.linalg.vector_norm(flat(want))).item()


def linear_schedule(lr: float, warmup: int, total: int) -> list[float]:
    """transformers' get_linear_schedule_with_warmup, written out: the lr of optimizer steps 1..total."""
    return [lr * (s / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))) for s in range(total)]


def encoder_alone(model, examples, task="sst2") -> tuple[list[int], list[float]]:
    """SST-2 examples through a tiny-bert classifier one at a time: (predicted labels, cross-entropies)."""
    from loretta.experiment.models import minilm_tokenizer
    from tasks import get_task

    spec, tokenizer, predictions, losses = get_task(task), minilm_tokenizer(), [], []
    with torch.no_grad():
        for ex in examples:
            first, second = spec.encoder_inputs(ex)
            logits = model.eval()(**tokenizer(first, second, return_tensors="pt")).logits[0]
            predictions.append(int(logits.argmax()))
            losses.append(F.cross_entropy(logits, torch.tensor(spec.encoder_label(ex))).item())
    return predictions, losses


# -- optimizer steps ---------------------------------------------------------------------------------


ACCUMULATION = {  # 10 examples, micro-batches of 3, 2 per step: windows [3, 3] and [3, 1] in each epoch
    "encoder": ["model=tiny-bert", "task=sst2", "method=lora", *NO_DROPOUT],
    "decoder-lm": ["model=tiny-llama", "task=sst2", "method=lora", "task.objective=lm", "method.lora_dropout=0.0"],
}


@pytest.mark.parametrize("case", list(ACCUMULATION))
def test_an_accumulated_step_is_the_step_of_one_big_batch(case, kinds, tmp_path, monkeypatch):
    """Each optimizer step's gradient is the gradient of the loss of all its examples as one batch
    (a mean over examples, or over target tokens for the LM loss), also for the epoch's last window of
    fewer micro-batches and for a last micro-batch smaller than the others; the steps follow
    transformers' linear schedule."""
    seen = record(monkeypatch)
    result = run([*ACCUMULATION[case], f"task.data_dir={kinds['classification'][1]}", "train.num_train=10",
                  "train.batch_size=3", "train.grad_accum=2", "train.max_steps=-1", "train.epochs=2",
                  "train.eval_every=0", "train.max_grad_norm=0", "train.warmup_steps=1", "train.lr=1e-2"], tmp_path)
    assert result["steps"] == len(seen.steps) == 4  # ceil(ceil(10 / 3) / 2) = 2 an epoch
    sizes = [[len(b["labels"]) for b in s["batches"]] for s in seen.steps]
    assert sizes == [[3, 3], [3, 1], [3, 3], [3, 1]]
    assert [s["lr"] for s in seen.steps] == pytest.approx(linear_schedule(1e-2, 1, 4), rel=1e-6)
    errors = [relative_error(step["grads"], big_batch_gradients(seen.model, step)) for step in seen.steps]
    assert max(errors) < 1e-4, errors


def test_gradients_are_clipped_once_per_step_on_the_accumulated_gradient(kinds, tmp_path, monkeypatch):
    seen = record(monkeypatch)
    run(["model=tiny-bert", "task=sst2", "method=lora", *NO_DROPOUT, f"task.data_dir={kinds['classification'][1]}",
         "train.num_train=8", "train.batch_size=2", "train.grad_accum=4", "train.max_steps=2", "train.eval_every=2",
         "train.max_grad_norm=1e-5", "train.lr=1e-2"], tmp_path)
    assert len(seen.steps) == 2
    for step in seen.steps:  # clipped (torch divides by the norm + 1e-6)...
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in step["grads"]]))
        assert norm.item() == pytest.approx(1e-5, rel=1e-2)
        # ... as the whole step's gradient is: clipping each micro-batch's would point elsewhere
        assert relative_error(step["grads"], big_batch_gradients(seen.model, step, max_grad_norm=1e-5)) < 1e-4


@pytest.mark.parametrize("warmup, expected", [("train.warmup_ratio=0.5", 3), ("train.warmup_steps=2", 2)])
def test_warmup_then_linear_decay_over_max_steps(warmup, expected, kinds, tmp_path, monkeypatch):
    """max_steps wins over epochs (6 steps are 3 epochs of 2); warmup_ratio is a fraction of them."""
    seen = record(monkeypatch)
    result = run(["model=tiny-bert", "task=sst2", "method=lora", f"task.data_dir={kinds['classification'][1]}",
                  "train.num_train=8", "train.batch_size=4", "train.max_steps=6", "train.epochs=1",
                  "train.eval_every=3", warmup, "train.lr=1e-3"], tmp_path)
    assert result["steps"] == 6 and [h["step"] for h in result["history"]] == [3, 6]
    assert [h["epoch"] for h in result["history"]] == [1.5, 3.0]
    assert [s["lr"] for s in seen.steps] == pytest.approx(linear_schedule(1e-3, expected, 6), rel=1e-6)


def test_early_stopping_counts_evaluations_also_once_per_epoch(kinds, tmp_path):
    """eval_every=0 evaluates at each epoch's end; nothing improves at lr 1e-9 (a tie is no improvement),
    so patience 1 stops at the second evaluation, and the first one is the best."""
    result = run(["model=tiny-bert", "task=sst2", "method=lora", f"task.data_dir={kinds['classification'][1]}",
                  "train.num_train=8", "train.batch_size=4", "train.max_steps=-1", "train.epochs=5", "train.eval_every=0",
                  "train.early_stopping_patience=1", "train.lr=1e-9"], tmp_path)
    assert [h["step"] for h in result["history"]] == [2, 4]
    assert result["steps"] == 4 and result["best_step"] == 2


def test_train_time_leaves_out_evaluations_and_checkpoints(kinds, tmp_path, monkeypatch):
    from loretta.experiment import loop

    save = loop.save_checkpoint

    def slow_save(*args, **kwargs):  # part of every evaluation
        time.sleep(0.5)
        return save(*args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", slow_save)
    result = run(["model=tiny-bert", "task=sst2", "method=lora", f"task.data_dir={kinds['classification'][1]}",
                  "train.max_steps=3", "train.eval_every=1", "train.batch_size=2"], tmp_path)
    assert len(result["history"]) == 3
    assert result["train_time_s"] < 0.5, result["train_time_s"]  # three tiny steps; the evaluations took 1.5 s


# -- evaluation --------------------------------------------------------------------------------------


def test_every_dev_example_is_scored_once_by_the_model_alone(kinds, tmp_path, monkeypatch):
    """8 dev examples in batches of 3: each prediction and loss is the model's on that example alone (no
    padding effect, none dropped or repeated), the dev loss is their mean and the metric is theirs."""
    from sklearn.metrics import accuracy_score

    from tasks import get_task

    seen = record(monkeypatch)
    result = run(["model=tiny-bert", "task=sst2", "method=lora", f"task.data_dir={kinds['classification'][1]}",
                  "train.max_steps=0", "train.eval_batch_size=3"], tmp_path)
    (predictions, examples), = seen.scored
    assert len(predictions) == len(examples) == result["num_eval_examples"] == 8
    expected, losses = encoder_alone(seen.model, examples)
    assert predictions == expected
    gold = [get_task("sst2").encoder_label(ex) for ex in examples]
    assert result["metrics"]["accuracy"] == pytest.approx(accuracy_score(gold, predictions))
    assert result["metrics"]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-t5"])
def test_dev_lm_loss_is_a_mean_over_examples_whatever_the_batch_size(model, kinds, tmp_path):
    """COPA's dev loss is the LM loss on the gold answer: each example's mean over its answer's tokens,
    then the mean over examples (a batch of one gives exactly that)."""
    task, data_dir, extra = kinds["multiple_choice"]
    losses = [run([f"model={model}", f"task={task}", "method=lora", f"task.data_dir={data_dir}", *extra,
                   "train.max_steps=0", f"train.eval_batch_size={size}"], tmp_path / str(size))["history"][0]["loss"]
              for size in (1, 8)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("select_by", ["loss", "metric"])
def test_the_test_score_is_the_best_evaluations_weights(select_by, kinds, tmp_path, monkeypatch):
    """The best evaluation is the lowest dev loss (or highest metric; a tie keeps the earlier one),
    best.pt holds the weights of its step, and the test split is predicted with those weights."""
    seen = record(monkeypatch)
    result = run(["model=tiny-bert", "task=sst2", "method=lora", *NO_DROPOUT, f"task.data_dir={kinds['classification'][1]}",
                  "train.max_steps=4", "train.eval_every=1", "train.batch_size=2", "train.lr=0.3", "train.eval_split=test",
                  f"train.select_by={select_by}", "train.num_dev=4"], tmp_path)
    history = result["history"]
    key = (lambda h: (h["loss"], h["step"])) if select_by == "loss" else (lambda h: (-h["accuracy"], h["step"]))
    assert result["best_step"] == min(history, key=key)["step"] < result["steps"]
    best_entry = next(h for h in history if h["step"] == result["best_step"])
    assert result["best_dev"] == {k: v for k, v in best_entry.items() if k not in ("step", "epoch")}
    folder = tmp_path / "sst2" / "tiny-bert" / "lora" / "seed0"
    best = torch.load(folder / "checkpoint" / "best.pt", weights_only=True)
    trainable = [n for n, p in seen.model.named_parameters() if p.requires_grad]
    after_best = seen.steps[result["best_step"]]["params"]  # the parameters the next step started from
    for name, value in zip(trainable, after_best):
        torch.testing.assert_close(best[name], value, rtol=0, atol=0)
    params = dict(seen.model.named_parameters())
    for name in trainable:  # reloaded (the last step's are not the best)
        torch.testing.assert_close(params[name].detach(), best[name], rtol=0, atol=0)
    test_predictions, test_examples = seen.scored[-1]  # the last scoring: the test split
    assert len(test_examples) == result["num_eval_examples"] == 8
    assert test_predictions == encoder_alone(seen.model, test_examples)[0]


# -- precision, resume -------------------------------------------------------------------------------


def test_bf16_trains_fp32_weights_and_evaluates_under_the_same_autocast(kinds, tmp_path, monkeypatch):
    from loretta.experiment import methods

    seen, forwards = record(monkeypatch), set()
    apply = methods.apply

    def apply_and_watch(*args, **kwargs):
        model = apply(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda m, i, o: forwards.add(
                    (m.training, torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))))
        return model

    monkeypatch.setattr(methods, "apply", apply_and_watch)
    task, data_dir, extra = kinds["multiple_choice"]
    run(["model=tiny-llama", f"task={task}", "method=lora", f"task.data_dir={data_dir}", *extra,
         "model.dtype=bfloat16", "train.precision=bf16"], tmp_path)
    assert forwards == {(True, torch.bfloat16), (False, torch.bfloat16)}
    assert {p.dtype for step in seen.steps for p in step["params"] + step["grads"]} == {torch.float32}
    assert {p.dtype for p in seen.model.parameters() if not p.requires_grad} == {torch.bfloat16}


@pytest.mark.parametrize("warmup, says", [("train.warmup_steps=500", True), ("train.warmup_steps=4", True),
                                          ("train.warmup_steps=3", False), ("train.warmup_ratio=0.5", False)])
def test_a_warmup_as_long_as_the_run_says_the_lr_is_never_reached(warmup, says, kinds, tmp_path, capsys):
    """train=glue's 500 warmup steps under a short max_steps: the lr would silently stay below train.lr."""
    run(["model=tiny-bert", "task=sst2", "method=lora", f"task.data_dir={kinds['classification'][1]}",
         "train.num_train=8", "train.batch_size=4", "train.max_steps=4", "train.eval_every=4", warmup,
         "train.lr=1e-3"], tmp_path)
    out = capsys.readouterr().out
    assert ("the learning rate peaks at" in out) == says
    assert max(linear_schedule(1.0, int(warmup.split("=")[1]) if "steps" in warmup else 2, 4)) < 1 or not says
    if warmup.endswith("500"):
        assert "warmup 500 steps >= the run's 4: the learning rate peaks at 6e-06, never reaching lr 0.001" in out


def test_fp16_on_cpu_says_it_computes_in_fp32(kinds, tmp_path, capsys):
    """accelerate has no fp16 autocast on CPU and falls back to fp32 without a word."""
    run(["model=tiny-bert", "task=sst2", "method=lora", f"task.data_dir={kinds['classification'][1]}",
         "train.precision=fp16", "train.max_steps=1", "train.eval_every=1"], tmp_path)
    assert "train.precision=fp16: accelerate has no such autocast on cpu; computing in fp32" in capsys.readouterr().out


def test_resuming_mid_epoch_continues_the_same_steps(kinds, tmp_path, monkeypatch):
    """Interrupted after step 4 (2 micro-batches into the second epoch of windows [2, 2], [2, 2], [2]),
    the resumed run's step 5 has the same examples, parameters, gradients (dropout's RNG included) and lr
    as the uninterrupted run's, and ends with the same weights, optimizer and schedule."""
    from .helpers import die_after_checkpoint

    seen = record(monkeypatch)
    args = ["model=tiny-bert", "task=sst2", "method=lora", f"task.data_dir={kinds['classification'][1]}",
            "train.num_train=10", "train.batch_size=2", "train.grad_accum=2", "train.max_steps=5", "train.eval_every=2",
            "train.lr=1e-2", "train.warmup_steps=2", "train.keep_checkpoint=true"]
    whole = run(args, tmp_path / "whole")
    with monkeypatch.context() as patch:
        die_after_checkpoint(patch, step=4)
        with pytest.raises(KeyboardInterrupt):
            run(args, tmp_path / "cut")
    resumed = run([*args, "resume=true"], tmp_path / "cut")
    assert resumed["resumed_at_steps"] == [4] and len(seen.steps) == 5 + 4 + 1
    straight, again = seen.steps[4], seen.steps[-1]
    assert [b["input_ids"].tolist() for b in again["batches"]] == [b["input_ids"].tolist() for b in straight["batches"]]
    assert again["lr"] == straight["lr"]
    for name in ("params", "grads"):
        for a, b in zip(again[name], straight[name]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed["history"] == whole["history"] and resumed["metrics"] == whole["metrics"]
    last = [torch.load(tmp_path / run_ / "sst2" / "tiny-bert" / "lora" / "seed0" / "checkpoint" / "last.pt",
                       weights_only=False) for run_ in ("whole", "cut")]
    for key in ("trainable", "optimizer", "scheduler"):
        torch.testing.assert_close(last[1][key], last[0][key], rtol=0, atol=0)


# -- encoder-decoders --------------------------------------------------------------------------------


def _easy_sst2(folder):
    """A sentiment task an untrained model can learn in a few steps: the first word says it all."""
    (folder / "SST-2").mkdir(parents=True)
    rows = ["sentence\tlabel", *(f"{'good' if i % 2 else 'bad'} movie number {i}\t{i % 2}" for i in range(16))]
    for name in ("train.tsv", "dev.tsv"):
        (folder / "SST-2" / name).write_text("\n".join(rows) + "\n")
    return folder


def _one_answer_squad(folder):
    """SQuAD files whose every answer is "blue": a decoder that learns it must end the answer itself."""
    paragraphs = [{"context": f"The car number {i} is blue.", "qas": [
        {"id": f"q{i}", "question": "What color is the car?", "answers": [{"text": "blue", "answer_start": 20}]}]}
        for i in range(8)]
    doc = {"version": "1.1", "data": [{"title": "cars", "paragraphs": paragraphs}]}
    for name in ("train-v1.1.json", "dev-v1.1.json"):
        (folder / name).write_text(json.dumps(doc))
    return folder


def test_t5_fits_a_learnable_classification_task(tmp_path):
    result = run(["model=tiny-t5", "task=sst2", "method=lora", f"task.data_dir={_easy_sst2(tmp_path / 'data')}",
                  "train.num_train=16", "train.batch_size=8", "train.max_steps=30", "train.eval_every=30",
                  "train.eval_at_start=true", "train.lr=1e-2"], tmp_path)
    start, end = result["history"]
    assert end["accuracy"] == 1.0 and end["loss"] < start["loss"] / 3, result["history"]


def test_t5_generates_the_learnt_answer_alone(tmp_path, monkeypatch):
    seen = record(monkeypatch)
    data = _one_answer_squad(tmp_path)
    result = run(["model=tiny-t5", "task=squad", "method=ft", f"task.data_dir={data}", "train.protocol=mezo",
                  "train.num_train=6", "train.num_dev=2", "train.batch_size=6", "train.max_steps=20",
                  "train.eval_every=20", "train.lr=1e-2", "train.max_new_tokens=8"], tmp_path)
    predictions, _ = seen.scored[-1]
    assert predictions == ["blue"] * len(predictions) and result["metrics"]["em"] == 1.0


# -- the recipes' losses -----------------------------------------------------------------------------


RECIPES = [("tiny-bert", "classification", "encoder"), ("tiny-bert", "regression", "encoder"),
           ("tiny-llama", "classification", "candidates"), ("tiny-llama", "multiple_choice", "lm_candidates"),
           ("tiny-llama", "generation", "lm_generate"), ("tiny-t5", "classification", "seq2seq_candidates"),
           ("tiny-t5", "generation", "seq2seq_generate")]


@pytest.mark.parametrize("model_name, kind, name", RECIPES, ids=[r[2] + "-" + r[1] for r in RECIPES])
def test_example_losses_and_weights_make_up_the_batch_loss(model_name, kind, name, kinds):
    """Each example's loss is the recipe's loss on it alone, and the batch loss is their mean weighted by
    loss_weight (1 an example, or its target tokens): what the loop's accumulation and dev loss rely on."""
    from loretta.experiment import data, models
    from tasks import get_task, load_splits

    from .helpers import compose

    task, data_dir, extra = kinds[kind]
    cfg = compose([f"model={model_name}", f"task={task}", *extra])
    spec = get_task(task)
    examples = load_splits(spec, protocol=cfg.train.protocol, data_dir=str(data_dir), seed=0, num_train=5,
                           num_dev=2, num_test=2)["train"]
    torch.manual_seed(0)
    loaded = models.load(cfg.model, num_labels=spec.num_labels)
    model, tok = loaded.model.eval(), loaded.tokenizer
    recipe = data.recipe_for(loaded.family, spec, cfg.task.objective)
    assert recipe.name == name
    features = recipe.encode_train(spec, examples, tok, 48, keep_answer=True)
    batch = recipe.collate_train(features, tok)
    with torch.no_grad():
        each = recipe.example_losses(model, batch)
        alone = [recipe.loss(model, recipe.collate_train([f], tok)).item() for f in features]
        weights = torch.tensor([float(recipe.loss_weight(recipe.collate_train([f], tok))) for f in features])
        assert each.tolist() == pytest.approx(alone, rel=1e-4)
        assert recipe.loss_weight(batch) == weights.sum()
        assert recipe.loss(model, batch).item() == pytest.approx(((each * weights).sum() / weights.sum()).item(), rel=1e-4)
    if name in ("lm_candidates", "lm_generate", "seq2seq_generate"):
        assert len(set(weights.tolist())) > 1  # target lengths differ: weighting them matters


def test_two_processes_train_and_score_as_one(kinds, tmp_path):
    """2 CPU processes of batch 2 take the steps of one process of batch 4 (DDP averages the processes'
    gradients), and score 7 dev examples in batches of 2 (accelerate repeats one to even the last batch
    out) to the same metrics and dev loss as one process does: each example once."""
    import subprocess
    import sys

    from .helpers import ENV, REPO, TINY

    args = ["model=tiny-bert", "task=sst2", "method=lora", *NO_DROPOUT, f"task.data_dir={kinds['classification'][1]}",
            "train.num_dev=7", "train.num_test=7", "train.eval_batch_size=2", "train.max_steps=2", "train.eval_every=1",
            "train.eval_at_start=true", "train.lr=1e-2"]
    one = run([*args, "train.batch_size=4"], tmp_path / "one")
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "loretta.run", *TINY, *args, "train.batch_size=2",
                           f"output_root={tmp_path / 'two'}"], cwd=REPO, env={**ENV, "ACCELERATE_USE_CPU": "1",
                                                                             "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "2 x cpu" in proc.stdout, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "sst2" / "tiny-bert" / "lora" / "seed0" / "results.json").read_text())
    assert [h["step"] for h in two["history"]] == [h["step"] for h in one["history"]] == [0, 1, 2]
    for a, b in zip(two["history"], one["history"]):
        assert a["accuracy"] == b["accuracy"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


# -- the record --------------------------------------------------------------------------------------


def test_peak_memory_is_the_runs_own(monkeypatch):
    """On a GPU the peak allocation is reset when a run starts: the jobs of a multirun share a process."""
    from loretta.experiment import results

    peak = {"now": 5 << 30}  # an earlier job's peak
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: peak["now"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: peak.update(now=1 << 20))
    results.reset_peak_memory()
    assert results.peak_memory() == (1 << 20, "cuda_max_allocated")


def test_parameter_counts_are_of_distinct_tensors(kinds, tmp_path, monkeypatch):
    """Counted by storage here (T5 ties its embeddings and LM head); the classifier PEFT trains is its copy
    (modules_to_save), counted as trainable, and the frozen original it keeps is in the total."""
    for model in ("tiny-t5", "tiny-bert"):
        seen = record(monkeypatch)
        task, data_dir, extra = kinds["classification"]
        result = run([f"model={model}", f"task={task}", "method=lora", f"task.data_dir={data_dir}", *extra,
                      "train.max_steps=0"], tmp_path / model)
        storages = {p.data_ptr(): p for p in seen.model.parameters()}
        assert result["total_params"] == sum(p.numel() for p in storages.values())
        assert result["trainable_params"] == sum(p.numel() for p in storages.values() if p.requires_grad)
        assert (result["trainable_params"], result["total_params"]) == seen.model.get_nb_trainable_parameters()


def test_a_dev_loss_never_finite_stops_the_run_with_a_clear_error(kinds, tmp_path, monkeypatch):
    """select_by=loss with every dev loss NaN: no evaluation is ever the best, so there is no checkpoint to
    report; the run says why (it used to end in a FileNotFoundError for best.pt) and writes no results."""
    from loretta.experiment import NonFiniteLossError, data

    monkeypatch.setattr(data, "_encoder_losses", lambda logits, labels: torch.full(labels.shape, float("nan")))
    args = ["model=tiny-bert", "task=sst2", "method=lora", f"task.data_dir={kinds['classification'][1]}",
            "train.max_steps=2", "train.eval_every=1", "train.select_by=loss"]
    with pytest.raises(NonFiniteLossError, match="no dev evaluation had a finite loss"):
        run(args, tmp_path)
    assert not (tmp_path / "sst2" / "tiny-bert" / "lora" / "seed0" / "results.json").exists()
