from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..config_base import LorettaConfigBase, check_number, check_positive_int, check_probability, name_list
from ..peft_types import LorettaPeftType

PEFT_TYPE = LorettaPeftType.LORETTA_REP


@dataclass
class LorettaRepConfig(LorettaConfigBase):
    """LoRETTA_rep: LoRA whose factors A (in x r) and B (r x out) are each a tensor-train layer.

    dW = A @ B * lora_alpha / r, added to each target's weight (mergeable for zero inference cost).
    """

    r: int = field(default=8, metadata={"help": "LoRA rank (inner size of the two TT factors)."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator (scaling = lora_alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter's input."})
    target_parameters: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Stacked expert weights to adapt, as PEFT's LoRA takes them: names (or dotted suffixes) of 3-D "
            "parameters, e.g. ['mlp.experts.gate_up_proj', 'mlp.experts.down_proj'] for Qwen3-MoE / Mixtral. Each "
            "expert gets its own TT-factored update. With target_modules=None a model type with a preset also gets "
            "the preset's targets; target_modules=[]: the parameters only. Needs lora_dropout=0.0 (the update is "
            "added to the weight, not applied to an input)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        self._validate_common()
        check_positive_int("r", self.r)
        check_probability("lora_dropout", self.lora_dropout)
        check_number("lora_alpha", self.lora_alpha)
        self.target_parameters = name_list("target_parameters", self.target_parameters, what="parameter name")
        check_no_dropout_on_parameters(self)


def check_no_dropout_on_parameters(config) -> None:
    if config.target_parameters and config.lora_dropout:
        raise ValueError(
            f"lora_dropout={config.lora_dropout!r} cannot apply to target_parameters {config.target_parameters}: "
            "their update is added to the weight, not applied to the layer's input (the experts route tokens "
            "inside); set lora_dropout=0.0"
        )
