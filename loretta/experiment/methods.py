"""Method registry: a method config (configs/method/*.yaml) -> a function that makes a model trainable.

Each builder takes the loaded model, a `Target` (family, task type, the model config's per-method
target modules) and the method's hyper-parameters as keyword arguments (the YAML keys other than
`name`, `builder` and `default_lr`), and returns the model to train: a `peft.PeftModel` for the
PEFT-style methods, the model itself with `requires_grad` set for bitfit / ft / encoder prefix.

  lora, ia3, prompt        PEFT
  prefix                   PEFT on causal LMs and encoder-decoders; ours on encoders (prefix.py)
  loretta_adp, loretta_rep the LoRETTA library (adapters = loretta_adp with tensorized=false)
  bitfit                   biases only (+ the label projection for classification)
  ft                       everything
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, dataclass, field, fields
from typing import Callable

from omegaconf import OmegaConf
from torch import nn

from .checks import ConfigError, at_least, integer

RESERVED = ("name", "builder", "default_lr")
METHODS: dict[str, Callable] = {}


@dataclass
class Target:
    family: str  # encoder | decoder | seq2seq
    model_type: str
    num_labels: int | None = None
    targets: dict = field(default_factory=dict)  # model config `targets`: method -> module names

    @property
    def task_type(self) -> str:
        return TASK_TYPES[self.family]


TASK_TYPES = {"encoder": "SEQ_CLS", "decoder": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}  # PEFT's, per family


def method(name: str):
    def register(fn):
        METHODS[name] = fn
        return fn

    return register


def apply(model: nn.Module, method_cfg, target: Target) -> nn.Module:
    """Wrap `model` as `method_cfg` says."""
    hyper = OmegaConf.to_container(method_cfg, resolve=True) if not isinstance(method_cfg, dict) else dict(method_cfg)
    builder = hyper.get("builder", hyper.get("name"))
    if builder not in METHODS:
        raise ConfigError(f"method builder {builder!r} is not one of {', '.join(sorted(METHODS))}")
    for key in RESERVED:
        hyper.pop(key, None)
    fn = METHODS[builder]
    accepted = _accepted(fn)
    unknown = sorted(set(hyper) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ConfigError(f"method {method_cfg.get('name', builder)!r} has no hyper-parameter(s) {unknown}; "
                          f"it takes: {', '.join(accepted)}")
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        return fn(model, target, **hyper)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"method {method_cfg.get('name', builder)!r}: {e}{_suspects(fn, hyper)}") from e


def _suspects(fn, hyper: dict) -> str:
    """The hyper-parameters a builder's error may be about, for its message: the libraries' own
    (`'<=' not supported between instances of 'str' and 'int'`) name neither the setting nor the value.
    Those whose value is not of their default's kind (a string where the default is a number), else
    every one given."""
    defaults = _defaults(fn)
    odd = {k: v for k, v in hyper.items() if not _same_kind(v, defaults.get(k))}
    if odd:
        return "; check " + ", ".join(f"method.{k}={v!r} (default: {defaults[k]!r})" for k, v in odd.items())
    if hyper:
        return " (with " + ", ".join(f"method.{k}={v!r}" for k, v in hyper.items()) + ")"
    return ""


def _defaults(fn) -> dict:
    """A builder's hyper-parameters -> their defaults (those it has)."""
    config_class = getattr(fn, "config_class", None)
    if config_class is not None:
        found = {}
        for f in fields(config_class()):
            if f.default is not MISSING:
                found[f.name] = f.default
            elif f.default_factory is not MISSING:
                found[f.name] = f.default_factory()
        return found
    params = list(inspect.signature(fn).parameters.values())[2:]
    return {p.name: p.default for p in params if p.default is not p.empty}


def _same_kind(value, default) -> bool:
    """Could `value` stand where `default` does? A None default says nothing; an int default wants an
    int, a float one any number, a bool one a bool."""
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _accepted(fn) -> list[str] | None:
    """Hyper-parameters a builder takes: its keyword arguments, or, for a builder declaring
    `config_class`, that config dataclass's fields."""
    config_class = getattr(fn, "config_class", None)
    if config_class is not None:
        cls = config_class()
        return [f.name for f in fields(cls) if f.init]
    params = list(inspect.signature(fn).parameters.values())[2:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params]


def _targets(given, target: Target, key: str):
    """Explicit targets, else the model config's, else None (the library's default). A string is
    kept as one (PEFT's regex, or "all-linear"); a list (Hydra's ListConfig) becomes a plain list."""
    if isinstance(given, str):
        return given
    if given is not None:
        return list(given)
    found = (target.targets or {}).get(key)
    return list(found) if found is not None else None


# -- PEFT ------------------------------------------------------------------------------------------


@method("lora")
def lora(model, target: Target, r=8, lora_alpha=16, lora_dropout=0.05, target_modules=None):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type=target.task_type, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        target_modules=_targets(target_modules, target, "lora"))
    return get_peft_model(model, config)


@method("ia3")
def ia3(model, target: Target, target_modules=None, feedforward_modules=None):
    from peft import IA3Config, get_peft_model

    config = IA3Config(task_type=target.task_type, target_modules=_targets(target_modules, target, "ia3"),
                       feedforward_modules=_targets(feedforward_modules, target, "ia3_feedforward"))
    return get_peft_model(model, config)


def _virtual_tokens(value) -> None:
    """PEFT takes 0 (or -1) virtual tokens without a word, and the run would then train nothing but a
    classification head."""
    integer("method.num_virtual_tokens", value, 1)


@method("prompt")
def prompt(model, target: Target, num_virtual_tokens=10):
    from peft import PromptTuningConfig, get_peft_model

    from .peft_generation import fix_prompt_learning_generation

    _virtual_tokens(num_virtual_tokens)
    peft_model = get_peft_model(model, PromptTuningConfig(task_type=target.task_type,
                                                          num_virtual_tokens=num_virtual_tokens))
    fix_prompt_learning_generation(peft_model)
    return peft_model


@method("prefix")
def prefix(model, target: Target, num_virtual_tokens=5, init_std=0.02):
    _virtual_tokens(num_virtual_tokens)
    at_least("method.init_std", init_std, 0)
    if target.family != "encoder":
        from peft import PrefixTuningConfig, get_peft_model

        from .peft_generation import fix_prompt_learning_generation

        peft_model = get_peft_model(model, PrefixTuningConfig(task_type=target.task_type,
                                                              num_virtual_tokens=num_virtual_tokens))
        fix_prompt_learning_generation(peft_model)
        return peft_model
    from .prefix import add_encoder_prefix

    add_encoder_prefix(model, num_virtual_tokens, init_std)
    _train_head(model, target, whole_classifier=True)
    return model


# -- LoRETTA (imported here, not at module import, so the runner works while the library changes) --


def _loretta(config_name: str):
    def config_class():
        import loretta

        return getattr(loretta, config_name)

    def build(model, target: Target, **hyper):
        import loretta

        config = config_class()(task_type=target.task_type, **hyper)
        return loretta.get_peft_model(model, config)

    build.config_class = config_class
    return build


METHODS["loretta_adp"] = _loretta("LorettaAdpConfig")
METHODS["loretta_rep"] = _loretta("LorettaRepConfig")


# -- plain PyTorch ------------------------------------------------------------------------------


HEAD_NAMES = ("classifier", "classifier.out_proj", "score")


def _train_head(model, target: Target, whole_classifier: bool) -> None:
    """Classification only: train the label projection (whole_classifier: the whole `classifier`)."""
    if target.family != "encoder":
        return
    modules = dict(model.named_modules())
    if whole_classifier and "classifier" in modules:
        modules["classifier"].requires_grad_(True)
        return
    for name in HEAD_NAMES:
        m = modules.get(name)
        if isinstance(m, nn.Linear) and m.out_features == target.num_labels:
            m.requires_grad_(True)
            return
    raise ConfigError(f"no label projection ({' / '.join(HEAD_NAMES)}) found in a {target.model_type!r} model")


@method("bitfit")
def bitfit(model, target: Target, train_head=True):
    for name, p in model.named_parameters():
        p.requires_grad_(name.rsplit(".", 1)[-1].endswith("bias"))  # also DeBERTa's q_bias / v_bias
    if train_head:
        _train_head(model, target, whole_classifier=False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"method=bitfit: a {target.model_type!r} model has no bias to train")
    return model


@method("ft")
def ft(model, target: Target):
    model.requires_grad_(True)
    return model
