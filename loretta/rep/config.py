from __future__ import annotations

from dataclasses import dataclass, field

from ..config_base import LorettaConfigBase, check_number, check_positive_int, check_probability
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

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        self._validate_common()
        check_positive_int("r", self.r)
        check_probability("lora_dropout", self.lora_dropout)
        check_number("lora_alpha", self.lora_alpha)
