"""Make the LoRETTA tuners first-class PEFT methods.

peft's `register_peft_method` only accepts names of its closed PeftType enum, so we add our own
types (peft_types.py: the same kind of enum, equal to their names) to the registry mappings directly
(DESIGN.md section 4). Idempotent: runs on every `import loretta`.
"""

from __future__ import annotations

from peft import mapping

from .adp import LorettaAdpConfig, LorettaAdpModel
from .adp.config import PEFT_TYPE as ADP_TYPE
from .rep import LorettaRepConfig, LorettaRepModel
from .rep.config import PEFT_TYPE as REP_TYPE

_METHODS = (
    (ADP_TYPE, LorettaAdpConfig, LorettaAdpModel),
    (REP_TYPE, LorettaRepConfig, LorettaRepModel),
)


def register() -> None:
    for peft_type, config_cls, model_cls in _METHODS:
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
        mapping.PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
        mapping.PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = model_cls.prefix
