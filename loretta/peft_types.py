"""The PEFT type names of the two tuners.

peft's own `PeftType` is a closed `(str, Enum)`, and code around it reads `config.peft_type.value`
(transformers' `load_adapter` / `delete_adapter`, PEFT's error messages). A plain string has no
`.value`, so ours is the same kind of enum: its members equal, and hash as, their names, so PEFT's
registry dicts find them by either and adapter_config.json stores the plain name.
"""

from __future__ import annotations

import enum


class LorettaPeftType(str, enum.Enum):
    LORETTA_ADP = "LORETTA_ADP"
    LORETTA_REP = "LORETTA_REP"
