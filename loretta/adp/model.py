from __future__ import annotations

from ..presets import fold_layer_indices, name_matches
from ..tuner_base import LorettaTunerBase
from .layer import INPUT_SIDE, OUTPUT_SIDE, LorettaAdpLayer


class LorettaAdpModel(LorettaTunerBase):
    """PEFT tuner inserting LoRETTA_adp adapters (see LorettaAdpConfig)."""

    prefix = "loretta_adp_"
    tuner_layer_cls = LorettaAdpLayer

    def _default_targets(self, preset, config) -> None:
        config.target_modules = list(preset.adp_output_side + preset.adp_input_side)
        if config.input_side_modules is None:
            config.input_side_modules = list(preset.adp_input_side)

    def _check_targeted(self, peft_config, targeted: list[str]) -> None:
        # a name in input_side_modules that matches no adapted layer would silently leave the
        # adapters it meant on the output side
        unmatched = [n for n in peft_config.input_side_modules or () if not any(name_matches(t, [n]) for t in targeted)]
        if unmatched:
            raise ValueError(
                f"input_side_modules {unmatched} match none of the layers LoRETTA_adp adapts here: "
                f"{sorted({fold_layer_indices(t) for t in targeted})}"
            )

    @staticmethod
    def _side(config, key: str) -> str:
        return INPUT_SIDE if name_matches(key, config.input_side_modules or ()) else OUTPUT_SIDE

    def _new_layer(self, target, adapter_name, peft_config, current_key):
        return LorettaAdpLayer(target, adapter_name, self._side(peft_config, current_key), peft_config)

    def _update_existing(self, target, adapter_name, peft_config, current_key) -> None:
        target.update_layer(adapter_name, self._side(peft_config, current_key), peft_config)
