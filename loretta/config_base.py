"""Configuration shared by the two LoRETTA tuners."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

from peft import PeftConfig

from .tt_linear import FORWARD_MODES, INIT_METHODS
from .tt_shapes import validate_tt_shapes_mapping

BIAS_CHOICES = ("none", "all")


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_bool(name: str, value) -> None:
    # a flag given as a string ("false" from a command line or an environment variable) is truthy: it
    # would silently do the opposite of what it says
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_probability(name: str, value) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def names_or_regex(field_name: str, value):
    """As PEFT reads target_modules: None, one string (a regex, or "all-linear"), or module names (a list;
    a set or tuple is sorted into one)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (set, tuple)):
        value = sorted(value)
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"{field_name} must be None, a regex string or a list of module names, got {value!r}")
    return value


def name_list(field_name: str, value, what: str = "module name") -> list[str] | None:
    """A list of module (or parameter) names; one name given as a string is a list of one (not of its characters)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple, set)) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"{field_name} must be a {what} or a list of them, got {value!r}")
    return list(value) if not isinstance(value, set) else sorted(value)


@dataclass
class LorettaConfigBase(PeftConfig):
    """Fields common to LoRETTA_adp and LoRETTA_rep (see each config for the method's own)."""

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Module names (or a regex) to adapt; None uses the model family's preset."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names (or a regex) never to adapt, as in PEFT's LoRA."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None,
        metadata={
            "help": "Adapt only these layer indices (as in PEFT's LoRA); the trainable layer norms inside other "
            "numbered layers stay frozen too. None: every layer."
        },
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Name of the module list that layers_to_transform indexes (e.g. 'layers', 'h'); "
                  "None: the first numbered module list in each name."},
    )
    tensor_rank: int = field(default=5, metadata={"help": "Inner rank of every tensor-train core."})
    tensorized_head: bool = field(
        default=True,
        metadata={"help": "For SEQ_CLS: replace the hidden x hidden head layer by a TT layer (False: train it densely)."},
    )
    trainable_layer_norms: bool = field(default=True, metadata={"help": "Train the model's LayerNorm/RMSNorm weights."})
    recompute_layer_norms: bool = field(
        default=True,
        metadata={
            "help": "Trainable norms keep only their input for the backward pass and recompute their forward "
            "there (the activation memory trainable norms would add; README 'Speed and memory'); torch's fused "
            "nn.LayerNorm keeps no more when trained and is left as it is. False: the norm class's forward, "
            "unchanged."
        },
    )
    init_method: str = field(
        default="noise_reduction",
        metadata={
            "help": "'noise_reduction' (default): Gaussian cores minus their frozen initial product, so the output "
            "is unchanged at step 0 and every core but those of LoRETTA_adp's down projection gets gradient from the "
            "first step; 'identity': the last core of the output-side factor is zero (output unchanged, slower "
            "start); 'gaussian': the released code's Gaussian "
            "cores (the output changes at step 0). Chosen by the SST-2 ablation in the README."
        },
    )
    tt_shapes: Optional[dict[str, list[int]]] = field(
        default=None,
        metadata={"help": "Explicit TT modes per weight size, e.g. {'768x64': [8, 8, 12, 8, 8]}; others are computed."},
    )
    tt_forward: str = field(
        default="auto",
        metadata={
            "help": "How a TT layer used as a linear map (LoRETTA_adp's projections, the tensorized head) multiplies: "
            "'factors': by the two rank-r factors its modes split into at the in/out boundary, r*(in+out) instead "
            "of in*out multiply-adds per token; 'matrix': by the rebuilt dense matrix, one matmul (fewest GPU "
            "kernels); 'auto' (default): on a CPU the factors where they are fewer multiply-adds, on a GPU the "
            "matrix. The same map either way. LoRETTA_rep's factors are always used as matrices."
        },
    )
    bias: str = field(default="none", metadata={"help": "Also train the base model's biases: 'none' or 'all'."})
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules to train and save (heads, norms are added automatically)."}
    )

    def _validate_common(self) -> None:
        check_positive_int("tensor_rank", self.tensor_rank)
        for flag in ("tensorized_head", "trainable_layer_norms", "recompute_layer_norms"):
            check_bool(flag, getattr(self, flag))
        if self.init_method not in INIT_METHODS:
            raise ValueError(f"init_method {self.init_method!r} is not one of {list(INIT_METHODS)}")
        if self.tt_forward not in FORWARD_MODES:
            raise ValueError(f"tt_forward {self.tt_forward!r} is not one of {list(FORWARD_MODES)}")
        if self.bias not in BIAS_CHOICES:
            raise ValueError(f"bias {self.bias!r} is not one of {list(BIAS_CHOICES)}")
        self.tt_shapes = validate_tt_shapes_mapping(self.tt_shapes)
        self.target_modules = names_or_regex("target_modules", self.target_modules)
        self.exclude_modules = names_or_regex("exclude_modules", self.exclude_modules)
        self._validate_layer_selection()
        self.modules_to_save = name_list("modules_to_save", self.modules_to_save)

    def _validate_layer_selection(self) -> None:
        layers = self.layers_to_transform
        if isinstance(layers, tuple):
            layers = self.layers_to_transform = list(layers)
        as_list = [layers] if isinstance(layers, int) else layers
        valid = isinstance(as_list, list) and all(type(i) is int and i >= 0 for i in as_list)
        if layers is not None and not valid:
            raise ValueError(f"layers_to_transform must be a layer index or a list of them (ints >= 0), got {layers!r}")
        if self.layers_pattern and layers is None:
            raise ValueError(f"layers_pattern={self.layers_pattern!r} needs layers_to_transform (the indices to adapt)")
        pattern = self.layers_pattern
        if pattern is not None and not (isinstance(pattern, str) or
                                        (isinstance(pattern, list) and all(isinstance(p, str) for p in pattern))):
            raise ValueError(f"layers_pattern must be None, a module list's name or a list of them, got {pattern!r}")
        if isinstance(self.target_modules, str) and (layers is not None or self.layers_pattern):
            raise ValueError(
                "layers_to_transform / layers_pattern cannot be combined with a regex target_modules "
                f"({self.target_modules!r}): put the layer indices in the regex, or give target_modules as a list"
            )
