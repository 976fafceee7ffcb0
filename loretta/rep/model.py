from __future__ import annotations

from ..tuner_base import LorettaTunerBase
from .layer import LorettaRepLayer


class LorettaRepModel(LorettaTunerBase):
    """PEFT tuner adding LoRETTA_rep (TT-factored LoRA) updates (see LorettaRepConfig)."""

    prefix = "loretta_rep_"
    tuner_layer_cls = LorettaRepLayer

    def _default_targets(self, preset, config) -> None:
        config.target_modules = list(preset.rep_targets)

    def _new_layer(self, target, adapter_name, peft_config, current_key):
        return LorettaRepLayer(target, adapter_name, peft_config)

    def _update_existing(self, target, adapter_name, peft_config, current_key) -> None:
        target.update_layer(adapter_name, peft_config)
