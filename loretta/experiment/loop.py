"""The training loop: one function, `train(cfg)`, read top to bottom.

  1. accelerate (device, mixed precision, gradient accumulation), seed
  2. task splits (tasks/), model + tokenizer (models.py), method (methods.py)
  3. features (data.py), AdamW, linear warmup + decay
  4. claim <output_dir> (only now: run_folder.py), resume from its checkpoint/last when asked
  5. epochs of optimizer steps (an accumulated step's gradient is that of its examples as one batch);
     evaluation every `eval_every` steps keeps the best trainable weights (by the primary metric or
     dev loss, a mean over examples) in checkpoint/best.pt and saves checkpoint/last
  6. the best weights scored on the evaluation split -> results.json (atomically)

Determinism: the seed fixes the model's random parts, the data sample and each epoch's order
(a permutation seeded by seed and epoch); a checkpoint holds the RNG states and how far into the
epoch the run was, so an interrupted run that resumes ends with the same metrics as one that was
not interrupted (on CPU; GPU kernels may add nondeterminism).
"""

from __future__ import annotations

import math
import random
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from peft import PeftModel
from torch.utils.data import DataLoader

from ..quantized import keep_4bit_training_layout
from . import adapters, checks, data, methods, models, results, run_folder, sharded
from .checks import ConfigError
from .logging import Tracker


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops and writes no results."""


@dataclass
class TrainState:
    """Everything about the run's progress that a checkpoint must restore."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    consumed: int = 0  # examples of this epoch's order already trained on (all processes)
    best_score: float = -math.inf  # primary metric, or minus the dev loss
    best_step: int = -1
    best_dev: dict = field(default_factory=dict)  # dev evaluation at best_step
    evals_since_best: int = 0
    train_time_s: float = 0.0
    history: list = field(default_factory=list)  # every evaluation
    resumed_at: list = field(default_factory=list)


@dataclass
class EvalContext:
    tokenizer: object
    max_new_tokens: int
    unwrap: object
    # every process runs each decoding step until all are done: under FSDP each forward is a collective, and
    # a process whose batch stopped early would leave the others waiting (transformers detects only its
    # own FSDP wrapping)
    synced_gpus: bool = False


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def apply_method(cfg, loaded: models.Loaded, num_labels: int | None) -> torch.nn.Module:
    """The run's method on its loaded model (step 2), with the model config's targets; one function, so that
    counting without weights (counts.py) builds what a run trains."""
    target = methods.Target(family=loaded.family, model_type=loaded.model_type, num_labels=num_labels,
                            targets=_plain(cfg.model.get("targets")))
    return methods.apply(loaded.model, cfg.method, target)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def train(cfg) -> dict:
    """Run the experiment `cfg` describes (a composed Hydra config); return its results record."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    checks.validate(cfg)
    out = Path(str(cfg.output_dir))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.resume:
        run_folder.check_resume_config(out, resolved)  # the completed run's or the checkpoint's settings
        if (done := results.read_completed(out)) is not None:
            print(f"[loretta] {out} is already completed; nothing to resume", flush=True)
            return done
    run_folder.refuse_if_taken(out, resume=cfg.resume, overwrite=cfg.get("overwrite", False))

    # 1. devices, precision, accumulation ----------------------------------------------------------
    AcceleratorState._reset_state()  # a new precision / accumulation per run (multirun jobs share a process)
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=checks.PRECISIONS[cfg.train.precision],
                              gradient_accumulation_steps=cfg.train.grad_accum)
    main = accelerator.is_main_process
    if cfg.train.precision != "fp32" and not accelerator.native_amp and main:  # accelerate falls back silently
        print(f"[loretta] train.precision={cfg.train.precision}: accelerate has no such autocast on "
              f"{accelerator.device.type}; computing in fp32", flush=True)
    with ExitStack() as on_exit, run_folder.sigterm_raises_system_exit():
        return _train(cfg, accelerator, out, resolved, on_exit)


def load_task_splits(cfg, spec) -> dict:
    """The task's splits under the run's protocol. The tasks package reports bad arguments and files as
    ValueError (a split_validation larger than the split, a malformed file: DataFormatError) or
    FileNotFoundError (a file missing from task.data_dir), with messages that name the value or the file
    and what would do: the run's settings or data, not a bug, so they stop it as a bad setting does."""
    from tasks import load_splits

    t = cfg.train
    data_dir = str(Path(str(cfg.task.data_dir)).expanduser()) if cfg.task.data_dir is not None else None
    try:
        return load_splits(spec, protocol=t.protocol, data_dir=data_dir, seed=cfg.seed, num_train=t.num_train,
                           num_dev=t.num_dev, num_test=t.num_test, split_validation=cfg.task.get("split_validation"))
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e


def _train(cfg, accelerator, out: Path, resolved: dict, on_exit: ExitStack) -> dict:
    """Steps 2-6; `on_exit` is train()'s, so that the folder claimed in step 4 is released however the run ends."""
    from accelerate.utils import set_seed
    from tasks import get_task

    t = cfg.train
    ckpt_dir = out / "checkpoint"
    main = accelerator.is_main_process
    set_seed(cfg.seed)
    results.reset_peak_memory()

    # 2. data, model, method ----------------------------------------------------------------
    spec = get_task(cfg.task.name)
    recipe = data.recipe_for(cfg.model.family, spec, cfg.task.objective)  # fails early on a bad pairing
    splits = load_task_splits(cfg, spec)
    for split in ("train", "dev", t.eval_split):
        if not splits.get(split):
            raise ConfigError(f"task {spec.name!r} has no {split!r} examples under protocol {t.protocol!r}")
    loaded = models.load(cfg.model, num_labels=spec.num_labels, label_names=spec.label_names,
                         device=accelerator.device)
    if cfg.model.get("quantization"):
        from peft import prepare_model_for_kbit_training

        # QLoRA's preparation (frozen, unquantized parameters in fp32); checkpointing is step 2's own
        loaded.model = prepare_model_for_kbit_training(loaded.model, use_gradient_checkpointing=False)
        keep_4bit_training_layout(loaded.model)  # every method trains between evaluations
    tokenizer = loaded.tokenizer
    model = apply_method(cfg, loaded, spec.num_labels)
    if cfg.get("init_adapter"):
        adapters.load_into(model, cfg.init_adapter, cfg.method.name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # trainable weights in fp32 even when the model is loaded in bf16/fp16
        p.data = p.data.float()
    num_trainable, num_total = results.count_parameters(model)
    if num_trainable == 0:
        raise ConfigError(f"method {cfg.method.name!r} left nothing to train in model {cfg.model.name!r}")
    if t.gradient_checkpointing:
        # Newer transformers 5 releases (5.23 on) name it activation checkpointing and keep the old name as
        # a deprecated alias (a FutureWarning in every run's log); 5.0 has only the old name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # 3. features, optimizer, schedule ------------------------------------------------------
    encode = lambda fn, split: fn(spec, splits[split], tokenizer, t.max_length, keep_answer=split == "train")  # noqa: E731
    train_set = encode(recipe.encode_train, "train")
    dev_loss_set = encode(recipe.encode_train, "dev")
    eval_sets = {s: encode(recipe.encode_eval, s) for s in {"dev", t.eval_split}}
    if not train_set:
        raise ConfigError(f"task {spec.name!r}: no training example has a gold answer")

    def loader(features, collate, **kw):
        # its own generator: iterating a DataLoader draws a seed from the global RNG otherwise, which
        # would shift dropout masks after a resume
        return accelerator.prepare_data_loader(DataLoader(features, collate_fn=lambda f: collate(f, tokenizer),
                                                          num_workers=t.num_workers, generator=torch.Generator(),
                                                          **kw))

    dev_loss_loader = loader(dev_loss_set, recipe.collate_train, batch_size=t.eval_batch_size)
    eval_loaders = {s: loader(f, recipe.collate_eval, batch_size=t.eval_batch_size) for s, f in eval_sets.items()}

    lr = checks.learning_rate(cfg)
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=tuple(t.adam_betas), eps=t.adam_eps,
                                  weight_decay=t.weight_decay)
    per_step = t.batch_size * accelerator.num_processes
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / per_step) / t.grad_accum)
    total_steps = t.max_steps if t.max_steps >= 0 else t.epochs * steps_per_epoch  # 0: evaluation only
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = round(t.warmup_ratio * total_steps) if t.warmup_ratio > 0 else t.warmup_steps
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    ctx = EvalContext(tokenizer=tokenizer, max_new_tokens=t.max_new_tokens, unwrap=accelerator.unwrap_model,
                      synced_gpus=sharded.prepare_generation(accelerator.unwrap_model(model))
                      and accelerator.num_processes > 1)

    # 4. the run's folder, claimed only now (run_folder: an error or a kill in steps 1-3 leaves an earlier
    # run in it as it was); resume -------------------------------------------------------------------
    if main:
        run_folder.claim(out, resume=cfg.resume, overwrite=cfg.get("overwrite", False))
        on_exit.callback(run_folder.release, out)
        run_folder.save_hydra_record(out, cfg)
    accelerator.wait_for_everyone()
    state = TrainState()
    if cfg.resume and (ckpt_dir / "last.pt").is_file():
        state = load_checkpoint(ckpt_dir / "last.pt", accelerator.unwrap_model(model), optimizer, scheduler)
        state.resumed_at.append(state.step)
        if main:
            run_folder.truncate_metrics(out, state.step)
        print(f"[loretta] resuming {out} at step {state.step}/{total_steps}", flush=True)
    elif cfg.resume:
        print(f"[loretta] resume=true but {ckpt_dir / 'last.pt'} does not exist: starting from scratch", flush=True)

    run_name = f"{spec.name}-{cfg.model_tag}-{cfg.method.name}{cfg.variant}-seed{cfg.seed}"
    tracker = Tracker(cfg.logger, output_dir=out, name=run_name, tags=[spec.name, cfg.model_tag, cfg.method.name],
                      config=resolved, active=main)
    tracker.summary({"trainable_params": num_trainable, "total_params": num_total})
    if main:
        print(f"[loretta] {run_name}: {num_trainable:,} trainable of {num_total:,} parameters; "
              f"{len(train_set)} train / {len(dev_loss_set)} dev / {len(eval_sets[t.eval_split])} "
              f"{t.eval_split} examples; {total_steps} steps, lr {lr:g}; {accelerator.num_processes} x "
              f"{accelerator.device}, {t.precision}", flush=True)
        if 0 < total_steps <= warmup:  # e.g. a short max_steps under train=glue's 500 warmup steps
            # the scheduler's factor at optimizer steps 0 .. total-1 is step / warmup while step < warmup
            print(f"[loretta] warmup {warmup} steps >= the run's {total_steps}: the learning rate peaks at "
                  f"{lr * (total_steps - 1) / warmup:.3g}, never reaching lr {lr:g} (train.warmup_steps / "
                  f"train.warmup_ratio set it)", flush=True)

    def evaluate(split: str, metrics: bool = True, loss: bool = True) -> dict:
        """Scores on a split: the task's metrics from predictions, and the training loss as the mean of
        each example's own (whatever the batch size). gather_for_metrics: every process's share, less the
        examples accelerate repeated to even out the last batch."""
        model.eval()
        result, preds, losses = {}, [], []
        with torch.no_grad(), accelerator.autocast():
            if metrics:
                for batch in eval_loaders[split]:
                    p, batch_losses = recipe.predict(model, batch, ctx)
                    preds.extend(accelerator.gather_for_metrics(p, use_gather_object=True))
                    if batch_losses is not None:
                        losses.append(accelerator.gather_for_metrics(batch_losses.float()))
                result.update(spec.compute_metrics(preds, splits[split]))
            if loss and (split == "dev") and not losses:
                for batch in dev_loss_loader:
                    losses.append(accelerator.gather_for_metrics(recipe.example_losses(model, batch).float()))
        known = torch.cat(losses).cpu() if losses else torch.empty(0)
        known = known[~known.isnan()]  # examples without a gold answer have no loss
        if known.numel():
            result["loss"] = known.double().mean().item()
        model.train()
        return result

    def evaluate_and_keep_best() -> bool:
        """Evaluate on dev, keep the best weights, save the last checkpoint; True = stop early."""
        want_metrics = t.select_by == "metric" or t.eval_split == "dev"
        start = time.time()
        dev = evaluate("dev", metrics=want_metrics, loss=True)
        value = dev.get(spec.primary_metric if t.select_by == "metric" else "loss")
        finite = value is not None and math.isfinite(value)  # a NaN would compare as never better, silently
        score = (value if t.select_by == "metric" else -value) if finite else -math.inf
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_step, state.best_dev, state.evals_since_best = score, state.step, dev, 0
            best = sharded.trainable_state(accelerator.unwrap_model(model))  # every process: FSDP gathers
            if main:
                _atomic_save(best, ckpt_dir / "best.pt")
        else:
            state.evals_since_best += 1
        # epochs trained so far (state.epoch alone is off by one at the end of the last epoch)
        state.history.append({"step": state.step, "epoch": round(state.step / steps_per_epoch, 3), **dev})
        tracker.log({**{f"dev/{k}": v for k, v in dev.items()}, "dev/eval_time_s": time.time() - start}, state.step)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in dev.items())
        accelerator.print(f"[loretta] step {state.step}: dev {shown}{' (best)' if improved else ''}")
        stop = 0 < t.early_stopping_patience <= state.evals_since_best
        accelerator.wait_for_everyone()
        if main and not state.resumed_at:  # a resumed run keeps the record of the run it continues
            run_folder.save_run_config(out, resolved)
        save_checkpoint(ckpt_dir / "last.pt", accelerator.unwrap_model(model), optimizer, scheduler, state, main)
        return stop

    # what each training example weighs in a loss's mean (1, or its target tokens), counted once: an optimizer
    # step's examples weigh their sum, as one batch of them would
    example_weights = [float(recipe.loss_weight(recipe.collate_train([f], tokenizer))) for f in train_set]

    def step_weight(order: list[int], start: int) -> float:
        """What the examples of the optimizer step that starts at `order[start]` weigh together."""
        return sum(example_weights[i] for i in order[start:start + per_step * t.grad_accum])

    # 5. train ----------------------------------------------------------------------------------
    progress = None
    if main and t.progress_bar:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state.step, desc=run_name, dynamic_ncols=True)
    if state.step == 0 and t.eval_at_start and not state.history:
        evaluate_and_keep_best()
    model.train()
    done = state.step >= total_steps
    logged_loss, logged_weight, logged_examples, logged_start = 0.0, 0.0, 0, time.time()
    while not done and state.epoch < num_epochs:
        order = epoch_order(len(train_set), cfg.seed, state.epoch)[state.consumed:]  # from a step's start
        train_loader = loader(train_set, recipe.collate_train, batch_size=t.batch_size, sampler=order)
        session_start = time.time()
        for i, batch in enumerate(train_loader):
            if i % t.grad_accum == 0:  # accelerate's windows: grad_accum micro-batches, the epoch's last maybe fewer
                step_total = step_weight(order, i * per_step)
            weight = float(recipe.loss_weight(batch))
            with accelerator.accumulate(model):
                loss = recipe.loss(model, batch)
                if not torch.isfinite(loss.detach()):
                    raise NonFiniteLossError(
                        f"training loss is {loss.item()} at step {state.step + 1} (epoch {state.epoch}); "
                        f"stopping, no results written (earlier checkpoints and results are untouched). "
                        f"Try a lower train.lr (now {lr:g}), train.precision=fp32 or train.max_grad_norm>0.")
                # accelerate divides each micro-batch's mean loss by grad_accum, and DDP averages over processes:
                # weighed by its share, a step's gradient is that of its examples as one batch, also when the
                # epoch's last window or micro-batch is short (a mean of means would overweigh those examples).
                # Under several processes, examples accelerate repeats to fill an epoch's last batch add on top.
                share = weight * t.grad_accum * accelerator.num_processes / max(step_total, 1e-12)
                accelerator.backward(loss * share)
                if accelerator.sync_gradients and t.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)  # frozen ones have no grad
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.consumed += per_step
            logged_loss += loss.item() * weight
            logged_weight += weight
            logged_examples += min(per_step, len(order) - i * per_step)
            if not accelerator.sync_gradients:
                continue
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            state.step += 1
            if progress is not None:
                progress.update(1)
            if state.step % t.log_every == 0 or state.step == total_steps:
                elapsed = max(time.time() - logged_start, 1e-9)
                # this process's examples (or target tokens) since the last log, as one batch
                logged = {"train/loss": logged_loss / max(logged_weight, 1e-12), "train/lr": scheduler.get_last_lr()[0],
                          "train/examples_per_s": logged_examples / elapsed, "train/epoch": state.epoch}
                tracker.log(logged, state.step)
                if progress is not None:
                    progress.set_postfix(loss=f"{logged['train/loss']:.4f}", ex_s=f"{logged['train/examples_per_s']:.1f}")
                logged_loss, logged_weight, logged_examples, logged_start = 0.0, 0.0, 0, time.time()
            done = state.step >= total_steps
            if (t.eval_every > 0 and state.step % t.eval_every == 0) or done:
                state.train_time_s += time.time() - session_start
                if evaluate_and_keep_best():
                    done = True
                session_start = time.time()  # evaluations and checkpoints are not training time
            if done:
                break
        else:  # the epoch ran to its end
            state.train_time_s += time.time() - session_start
            state.epoch, state.consumed = state.epoch + 1, 0
            if t.eval_every == 0 and not done and evaluate_and_keep_best():
                done = True  # early stopping counts these evaluations too
            continue
        break
    if progress is not None:
        progress.close()

    # 6. the best weights on the evaluation split ------------------------------------------------
    accelerator.wait_for_everyone()
    if state.best_step < 0:
        evaluate_and_keep_best()
    if state.best_step < 0:
        criterion = spec.primary_metric if t.select_by == "metric" else "loss"
        seen = ", ".join(f"step {h['step']}: {h.get(criterion)}" for h in state.history)
        raise NonFiniteLossError(f"no dev evaluation had a finite {criterion} ({seen}), so there is no best "
                                 f"checkpoint to report; no results written")
    unwrapped = accelerator.unwrap_model(model)
    scored_at_best = t.eval_split == "dev" and spec.primary_metric in state.best_dev
    save_adapter = t.save_adapter and isinstance(unwrapped, PeftModel)
    if save_adapter or not scored_at_best:  # every process (under FSDP each loads its shards)
        load_trainable(unwrapped, ckpt_dir / "best.pt")
    final = dict(state.best_dev) if scored_at_best else evaluate(t.eval_split, metrics=True, loss=t.eval_split == "dev")
    if save_adapter:
        # the best weights, in the format PeftModel.from_pretrained reads; before results.json, so a
        # completed record always has its adapter beside it
        gathered = sharded.adapter_state(unwrapped)
        if main:
            adapters.save(unwrapped, tokenizer, out / adapters.ADAPTER, state_dict=gathered)
    peak, peak_kind = results.peak_memory()
    record = {
        "task": spec.name, "model": cfg.model_tag, "method": cfg.method.name, "seed": cfg.seed,
        "status": results.COMPLETED,
        "experiment": cfg.experiment_name, "variant": cfg.variant,
        "metrics": final, "primary_metric": spec.primary_metric, "eval_split": t.eval_split,
        "best_step": state.best_step, "selected_by": t.select_by, "best_dev": state.best_dev,
        "steps": state.step, "trainable_params": num_trainable, "total_params": num_total,
        "train_time_s": round(state.train_time_s, 3), "peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
        "num_train_examples": len(splits["train"]), "num_eval_examples": len(splits[t.eval_split]),
        "lr": lr, "history": state.history, "resumed_at_steps": state.resumed_at,
        "config": resolved, "versions": results.versions(),
    }
    if main:
        results.write_json_atomic(out / results.RESULTS, record)
        if not t.keep_checkpoint:
            (ckpt_dir / "last.pt").unlink(missing_ok=True)
    if t.eval_split != "dev":  # dev's best is logged at its own step already; again here would be a false curve point
        tracker.log({f"{t.eval_split}/{k}": v for k, v in final.items()}, state.step)
    tracker.summary({f"final/{k}": v for k, v in final.items()})
    tracker.finish()
    accelerator.print(f"[loretta] done: {t.eval_split} {final} (best step {state.best_step}); {out / results.RESULTS}")
    return record


# -- checkpoints: the trainable weights only (PEFT runs stay small), optimizer, schedule, RNG ------


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    except BaseException:  # a SIGTERM mid-save (run_folder.sigterm_raises_system_exit) leaves no .tmp behind
        tmp.unlink(missing_ok=True)
        raise


def load_trainable(model, path: Path) -> None:
    weights = torch.load(path, map_location="cpu", weights_only=True)
    unexpected = sharded.load_trainable_state(model, weights)
    if unexpected:
        raise RuntimeError(f"{path}: weights the model does not have: {unexpected[:5]}")


def save_checkpoint(path: Path, model, optimizer, scheduler, state: TrainState, write: bool = True) -> None:
    """Called by every process (FSDP gathers the weights and optimizer state); the one with `write` saves."""
    trainable, optimizer_state = sharded.trainable_state(model), sharded.optimizer_state(model, optimizer)
    if not write:
        return
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    _atomic_save({"trainable": trainable, "optimizer": optimizer_state,
                  "scheduler": scheduler.state_dict(), "rng": rng, "state": asdict(state)}, path)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> TrainState:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    unexpected = sharded.load_trainable_state(model, ckpt["trainable"])
    if unexpected:
        raise RuntimeError(f"{path} does not fit this model (unexpected {unexpected[:5]}); was the config changed?")
    sharded.load_optimizer_state(model, optimizer, ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    random.setstate(ckpt["rng"]["python"])
    np.random.set_state(ckpt["rng"]["numpy"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return TrainState(**ckpt["state"])
