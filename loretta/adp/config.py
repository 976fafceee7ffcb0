from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from transformers.activations import ACT2FN

from ..config_base import LorettaConfigBase, check_bool, check_number, check_positive_int, check_probability, name_list
from ..peft_types import LorettaPeftType

PEFT_TYPE = LorettaPeftType.LORETTA_ADP


@dataclass
class LorettaAdpConfig(LorettaConfigBase):
    """LoRETTA_adp: a bottleneck adapter whose down and up projections are tensor-train layers.

    The adapter (down -> activation -> up, each with a bias, scaled residual) sits on the output of
    each target module, or on its input for modules listed in `input_side_modules`.
    `tensorized=False` gives the plain dense bottleneck adapter (the paper's "adapters" baseline).
    """

    bottleneck_size: int = field(default=64, metadata={"help": "Adapter hidden size."})
    non_linearity: str = field(default="relu", metadata={"help": "Activation between down and up (transformers ACT2FN)."})
    adapter_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's hidden activation."})
    scaling: float = field(default=1.0, metadata={"help": "Multiplier of the adapter's output."})
    tensorized: bool = field(default=True, metadata={"help": "TT projections (True) or dense ones (False)."})
    input_side_modules: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Targets whose adapter goes on the input side (a name or a list). None: with the default "
                  "targets (target_modules=None), the family preset's (LLaMA: gate_proj, up_proj); with targets "
                  "given, every adapter sits on its layer's output."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        self._validate_common()
        check_positive_int("bottleneck_size", self.bottleneck_size)
        check_probability("adapter_dropout", self.adapter_dropout)
        if self.non_linearity not in ACT2FN:
            raise ValueError(f"non_linearity {self.non_linearity!r} is not one of {sorted(ACT2FN)}")
        check_number("scaling", self.scaling)
        check_bool("tensorized", self.tensorized)
        self.input_side_modules = name_list("input_side_modules", self.input_side_modules)
