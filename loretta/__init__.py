"""LoRETTA: Low-Rank Economic Tensor-Train Adaptation as PEFT tuners.

    from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model, TaskType

Importing this package registers both tuners with PEFT, so `get_peft_model`, `save_pretrained`,
`PeftModel.from_pretrained`, `disable_adapter`, named adapters and (for LoRETTA_rep) merging work
as for any PEFT method. Needs only torch, transformers and peft.
"""

from peft import PeftModel, TaskType, get_peft_model

from .adp import LorettaAdpConfig, LorettaAdpLayer, LorettaAdpModel
from .registration import register
from .rep import LorettaRepConfig, LorettaRepLayer, LorettaRepModel
from .tt_linear import TTLinear
from .tt_shapes import default_tt_shape, tt_num_params

register()

__version__ = "0.1.0"

__all__ = [
    "LorettaAdpConfig",
    "LorettaAdpLayer",
    "LorettaAdpModel",
    "LorettaRepConfig",
    "LorettaRepLayer",
    "LorettaRepModel",
    "PeftModel",
    "TTLinear",
    "TaskType",
    "default_tt_shape",
    "get_peft_model",
    "register",
    "tt_num_params",
]
