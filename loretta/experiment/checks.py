"""Checks on a composed run config, before anything is loaded: every error names the bad value and
the valid choices. (An unknown group or key on the command line is caught earlier, by Hydra, with the
same kind of message; a key added with `+`, at the top level or in a section, is caught here.)"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from omegaconf import OmegaConf


class ConfigError(ValueError):
    """A run config that cannot work; the message says which value and what would."""


CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # as loretta/run.py finds them
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # ours -> accelerate's mixed_precision
WANDB_MODES = ("on", "offline", "off")
SELECT_BY = ("metric", "loss")
EVAL_SPLITS = ("dev", "test")
OBJECTIVES = ("auto", "candidates", "lm")
PROTOCOLS = ("glue", "mezo")
QUANTIZATIONS = ("4bit", "8bit")  # or null: full precision
# the frozen weights' dtype: the trainable ones are kept in float32, and the matmuls of a float64 model
# would mix the two
DTYPES = ("float32", "bfloat16", "float16")
SEED_MAX = 2**32 - 1  # numpy's seed range (accelerate's set_seed seeds numpy too)
KEY_CHECKED = ("model", "task", "train", "logger")  # the sections whose keys are checked against their configs
TRAIN_FLAGS = ("gradient_checkpointing", "eval_at_start", "keep_checkpoint", "save_adapter", "progress_bar")
# integer train settings -> their least value; 0 only where it means something (eval_every 0: once per
# epoch, early_stopping_patience 0: never stop early, epochs 0: allowed when max_steps is set)
TRAIN_INTEGERS = {"batch_size": 1, "eval_batch_size": 1, "grad_accum": 1, "max_length": 1, "max_new_tokens": 1,
                  "log_every": 1, "epochs": 0, "eval_every": 0, "warmup_steps": 0, "early_stopping_patience": 0,
                  "num_workers": 0}
SAMPLE_SIZES = ("num_train", "num_dev", "num_test")  # null: all (glue) / the protocol's size (mezo)


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


def flag(name: str, value) -> None:
    """Hydra reads true / false as booleans; anything else ("no", "maybe") arrives as a string that
    Python would take as true."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be true or false")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def at_least(name: str, value, low) -> None:
    if not is_number(value) or value < low:
        raise ConfigError(f"{name}={value!r} must be a number >= {low}")


def above(name: str, value, low) -> None:
    if not is_number(value) or value <= low:
        raise ConfigError(f"{name}={value!r} must be a number > {low}")


def between(name: str, value, low, high) -> None:
    if not is_number(value) or not low <= value <= high:
        raise ConfigError(f"{name}={value!r} must be a number in [{low}, {high}]")


def integer(name: str, value, low, high=None) -> None:
    """An int in [low, high]: not a bool, and not 4.0 either (counts and sizes feed range() and slicing)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{name}={value!r} must be an integer {bounds}")


def adam_betas(value) -> None:
    if not (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
            and all(is_number(beta) and 0 <= beta < 1 for beta in value)):
        raise ConfigError(f"train.adam_betas={value!r} must be two numbers in [0, 1), e.g. [0.9, 0.999]")


@cache
def known_keys(section: str) -> frozenset[str]:
    """The keys `section` may hold: those its config files set (configs/<section>/*.yaml and the section
    of configs/config.yaml), read from the files so that the list follows them."""
    keys = set(OmegaConf.load(CONFIGS / "config.yaml").get(section) or {})
    for path in (CONFIGS / section).glob("*.yaml"):
        keys |= set(OmegaConf.load(path)) - {"defaults"}
    return frozenset(keys)


@cache
def known_top_level_keys() -> frozenset[str]:
    """The top-level keys a run config may hold: configs/config.yaml's, the groups', and those the
    experiment presets (package _global_) set, read from the files."""
    keys = set(OmegaConf.load(CONFIGS / "config.yaml")) | {"model", "task", "method", "train"}
    for path in (CONFIGS / "experiment").glob("*.yaml"):
        keys |= set(OmegaConf.load(path))
    return frozenset(keys - {"defaults", "hydra"})


@cache
def preset_keys() -> dict[str, tuple[str, ...]]:
    """Top-level keys that only experiment presets set (ablation_shape's `shape`) -> those presets, read
    from the files."""
    common = set(OmegaConf.load(CONFIGS / "config.yaml")) | {"model", "task", "method", "train", "defaults", "hydra"}
    owners: dict[str, list[str]] = {}
    for path in sorted((CONFIGS / "experiment").glob("*.yaml")):
        for key in set(OmegaConf.load(path)) - common:
            owners.setdefault(key, []).append(path.stem)
    return {key: tuple(presets) for key, presets in owners.items()}


def no_unknown_keys(cfg) -> None:
    """Hydra refuses `train.lrr=1e-3` but adds `+train.lrr=1e-3` (or `+sed=1`), which the run would then
    ignore; so would it a preset's own key without that preset (`+shape=s64_12_64` without
    experiment=ablation_shape): a preset names itself in `experiment_preset`."""
    unknown = sorted(set(cfg) - known_top_level_keys() - {"hydra"})
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {', '.join(unknown)}; the top-level keys are: "
                          f"{', '.join(sorted(known_top_level_keys()))}")
    for key in sorted(set(cfg) & set(preset_keys())):
        presets = preset_keys()[key]
        if cfg.get("experiment_preset") not in presets:
            raise ConfigError(f"top-level key {key} is a setting of experiment={' / '.join(presets)}, which this run "
                              f"does not use (experiment_preset={cfg.get('experiment_preset')}): it would be "
                              f"ignored; add experiment={presets[0]}, or drop +{key}")
    for section in KEY_CHECKED:
        unknown = sorted(set(cfg[section]) - known_keys(section))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(f'{section}.{key}' for key in unknown)}; the keys of "
                              f"{section} are: {', '.join(sorted(known_keys(section)))}")


def validate(cfg) -> None:
    no_unknown_keys(cfg)
    t = cfg.train
    flag("resume", cfg.resume)
    flag("overwrite", cfg.get("overwrite", False))
    if cfg.resume and cfg.get("overwrite", False):
        raise ConfigError("resume=true and overwrite=true contradict each other: continue the run in the "
                          "output_dir, or replace it, not both")
    for name in TRAIN_FLAGS:
        flag(f"train.{name}", t[name])
    integer("seed", cfg.seed, 0, SEED_MAX)
    one_of("train.precision", t.precision, PRECISIONS)
    one_of("train.select_by", t.select_by, SELECT_BY)
    one_of("train.eval_split", t.eval_split, EVAL_SPLITS)
    one_of("train.protocol", t.protocol, PROTOCOLS)
    one_of("task.objective", cfg.task.objective, OBJECTIVES)
    one_of("model.dtype", cfg.model.dtype, DTYPES)
    wandb_mode(cfg.logger.wandb)
    for name, low in TRAIN_INTEGERS.items():
        integer(f"train.{name}", t[name], low)
    for name in ("weight_decay", "max_grad_norm"):
        at_least(f"train.{name}", t[name], 0)
    between("train.warmup_ratio", t.warmup_ratio, 0, 1)
    above("train.adam_eps", t.adam_eps, 0)
    adam_betas(t.adam_betas)
    if not isinstance(t.max_steps, int) or isinstance(t.max_steps, bool) or t.max_steps < -1:
        raise ConfigError(f"train.max_steps={t.max_steps!r} must be an integer >= -1 (-1: use train.epochs; "
                          "0: no training, evaluate the starting model)")
    if t.max_steps < 0 and t.epochs < 1:
        raise ConfigError(f"train.epochs={t.epochs!r} must be >= 1 when train.max_steps is not set")
    if t.lr is not None:  # null: the method's default_lr
        above("train.lr", t.lr, 0)
    for name in SAMPLE_SIZES:
        if t[name] is not None:
            integer(f"train.{name}", t[name], 1)
    if cfg.task.get("split_validation") is not None:
        integer("task.split_validation", cfg.task.split_validation, 1)
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


def learning_rate(cfg) -> float:
    """train.lr, else the method's default for this protocol."""
    if cfg.train.lr is not None:
        return float(cfg.train.lr)
    defaults = cfg.method.get("default_lr") or {}
    if cfg.train.protocol not in defaults:
        raise ConfigError(f"train.lr is null and method {cfg.method.name!r} has no default_lr for protocol "
                          f"{cfg.train.protocol!r}; set train.lr")
    return float(defaults[cfg.train.protocol])
