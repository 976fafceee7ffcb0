"""Checks on a composed run config, before anything is loaded: every error names the bad value and
the valid choices. (Unknown groups and keys are caught earlier, by Hydra, with the same kind of message.)"""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """A run config that cannot work; the message says which value and what would."""


PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # ours -> accelerate's mixed_precision
WANDB_MODES = ("on", "offline", "off")
SELECT_BY = ("metric", "loss")
EVAL_SPLITS = ("dev", "test")
OBJECTIVES = ("auto", "candidates", "lm")
PROTOCOLS = ("glue", "mezo")
QUANTIZATIONS = ("4bit", "8bit")  # or null: full precision


def one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")


def wandb_mode(value) -> str:
    """`logger.wandb` as on / offline / off (YAML and Hydra may hand over a boolean)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    value = str(value).lower()
    one_of("logger.wandb", value, WANDB_MODES)
    return value


def at_least(name: str, value, low) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ConfigError(f"{name}={value!r} must be a number >= {low}")


def validate(cfg) -> None:
    t = cfg.train
    one_of("train.precision", t.precision, PRECISIONS)
    one_of("train.select_by", t.select_by, SELECT_BY)
    one_of("train.eval_split", t.eval_split, EVAL_SPLITS)
    one_of("train.protocol", t.protocol, PROTOCOLS)
    one_of("task.objective", cfg.task.objective, OBJECTIVES)
    wandb_mode(cfg.logger.wandb)
    for name in ("batch_size", "eval_batch_size", "grad_accum", "max_length"):
        at_least(f"train.{name}", t[name], 1)
    for name in ("epochs", "eval_every", "warmup_steps", "warmup_ratio", "weight_decay", "max_grad_norm",
                 "early_stopping_patience", "max_new_tokens", "log_every", "num_workers"):
        at_least(f"train.{name}", t[name], 0)
    if not isinstance(t.max_steps, int) or isinstance(t.max_steps, bool) or t.max_steps < -1:
        raise ConfigError(f"train.max_steps={t.max_steps!r} must be an integer >= -1 (-1: use train.epochs; "
                          "0: no training, evaluate the starting model)")
    if t.max_steps < 0 and t.epochs < 1:
        raise ConfigError(f"train.epochs={t.epochs!r} must be >= 1 when train.max_steps is not set")
    if t.lr is not None:
        at_least("train.lr", t.lr, 0)
    for name in ("num_train", "num_dev", "num_test"):
        if t[name] is not None:
            at_least(f"train.{name}", t[name], 1)
    if cfg.task.get("split_validation") is not None:
        at_least("task.split_validation", cfg.task.split_validation, 1)
    if cfg.task.data_dir is not None and not Path(str(cfg.task.data_dir)).expanduser().is_dir():
        raise ConfigError(f"task.data_dir={cfg.task.data_dir!r} is not a directory (resolved from "
                          f"{Path.cwd()}); give the folder of the task's original-format files, or drop "
                          f"task.data_dir to use the Hub")
    if str(cfg.model.dtype) in ("bfloat16", "float16") and t.precision == "fp32":
        raise ConfigError(f"model.dtype={cfg.model.dtype} needs mixed precision: set train.precision=bf16 "
                          f"(or fp16), or model.dtype=float32 to train in fp32")
    if cfg.get("init_adapter") and not (Path(str(cfg.init_adapter)).expanduser() / "adapter_config.json").is_file():
        raise ConfigError(f"init_adapter={cfg.init_adapter!r} holds no adapter_config.json (resolved from {Path.cwd()}); "
                          "give a run's adapter/ folder or another PEFT save_pretrained folder")
    quantization = cfg.model.get("quantization")
    if quantization is not None:
        one_of("model.quantization", quantization, QUANTIZATIONS)
        if cfg.model.source == "tiny":
            raise ConfigError(f"model.quantization={quantization} needs pretrained weights; model {cfg.model.name!r} "
                              "is built from a config (source=tiny): set model.quantization=null")
        if cfg.method.name == "ft":
            raise ConfigError(f"method=ft trains every weight, and a model.quantization={quantization} model's "
                              "weights cannot be trained: use a PEFT method, or model.quantization=null")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed={cfg.seed!r} must be an integer")


def learning_rate(cfg) -> float:
    """train.lr, else the method's default for this protocol."""
    if cfg.train.lr is not None:
        return float(cfg.train.lr)
    defaults = cfg.method.get("default_lr") or {}
    if cfg.train.protocol not in defaults:
        raise ConfigError(f"train.lr is null and method {cfg.method.name!r} has no default_lr for protocol "
                          f"{cfg.train.protocol!r}; set train.lr")
    return float(defaults[cfg.train.protocol])
