from __future__ import annotations

from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from ..presets import fold_layer_indices, is_norm, linear_features, name_matches
from ..tt_linear import TTLinear
from ..tuner_base import LorettaTunerBase, _linear_layer_keys, _outside_peft_wrappers
from .layer import INPUT_SIDE, OUTPUT_SIDE, LorettaAdpBlock, LorettaAdpLayer


def _block_keys(model: nn.Module) -> list[str]:
    """Modules other than linear layers that an adapter can follow: any with parameters (a mixture-of-experts
    block, an MLP, an attention block) but the model itself, a norm (trained whole instead) or a TT layer; a
    LoRETTA_adp block already there (another adapter's) too."""
    return [n for n, m in model.named_modules()
            if n and _outside_peft_wrappers(n) and linear_features(m) is None
            and not isinstance(m, (TTLinear, ModulesToSaveWrapper)) and not is_norm(m)
            and (isinstance(m, LorettaAdpBlock) or any(True for _ in m.parameters()))]


class LorettaAdpModel(LorettaTunerBase):
    """PEFT tuner inserting LoRETTA_adp adapters (see LorettaAdpConfig)."""

    prefix = "loretta_adp_"
    tuner_layer_cls = LorettaAdpLayer
    _adaptable_kinds = ("a linear layer or a block with parameters: LoRETTA_adp adapts nn.Linear and transformers "
                        "Conv1D layers and the output of blocks such as a mixture of experts")

    def _default_targets(self, preset, config) -> None:
        config.target_modules = list(preset.adp_output_side + preset.adp_input_side)
        if config.input_side_modules is None:
            config.input_side_modules = list(preset.adp_input_side)

    def _adaptable_keys(self, model: nn.Module) -> list[str]:
        return _linear_layer_keys(model) + _block_keys(model)

    def _check_targeted(self, peft_config, targeted: list[str]) -> None:
        # a name in input_side_modules that matches no adapted layer would silently leave the
        # adapters it meant on the output side
        unmatched = [n for n in peft_config.input_side_modules or () if not any(name_matches(t, [n]) for t in targeted)]
        if unmatched:
            raise ValueError(
                f"input_side_modules {unmatched} match none of the layers LoRETTA_adp adapts here: "
                f"{sorted({fold_layer_indices(t) for t in targeted})}"
            )
        blocks = [t for t in targeted if self._is_block(t)]
        input_side = [b for b in blocks if self._side(peft_config, b) == INPUT_SIDE]
        if input_side:
            raise ValueError(
                f"input_side_modules {peft_config.input_side_modules} name {fold_layer_indices(input_side[0])} "
                f"({type(self.model.get_submodule(input_side[0])).__name__}), not a linear layer: LoRETTA_adp adapts a "
                "block's output only"
            )
        # PEFT would wrap the block, and then fail to find the targets inside it
        nested = [(t, b) for b in blocks for t in targeted if t.startswith(b + ".")]
        if nested:
            inner, block = nested[0]
            raise ValueError(
                f"target_modules={peft_config.target_modules!r} matches {block} and {inner} inside it: LoRETTA_adp "
                "adapts a block's output or layers inside it, not both"
            )

    def _check_nothing_trained_inside(self, peft_config, model: nn.Module, targeted: list[str]) -> None:
        # a trained norm inside a wrapped block would be renamed (…block.base_layer.norm) and silently frozen
        trained = peft_config.modules_to_save or []
        for block in (t for t in targeted if self._is_block(t)):
            inside = [n for n, _ in model.get_submodule(block).named_modules(prefix=block)
                      if n != block and name_matches(n, trained)]
            if inside:
                raise ValueError(
                    f"LoRETTA_adp cannot adapt {block} ({type(model.get_submodule(block)).__name__}) whole: "
                    f"{inside[0]} inside it is trained whole (modules_to_save, which has the trainable layer norms); "
                    "target the linear layers inside it, or set trainable_layer_norms=False"
                )

    def _is_block(self, key: str) -> bool:
        module = self.model.get_submodule(key)
        return linear_features(module) is None

    @staticmethod
    def _side(config, key: str) -> str:
        return INPUT_SIDE if name_matches(key, config.input_side_modules or ()) else OUTPUT_SIDE

    def _hidden_size(self) -> int:
        config = getattr(self.model, "config", None)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        width = getattr(text, "hidden_size", None)
        if not isinstance(width, int):
            raise ValueError("LoRETTA_adp on a block (not a linear layer) takes its width from the model config's "
                             f"hidden_size, which {type(self.model).__name__} does not have: target linear layers")
        return width

    def _new_layer(self, target, adapter_name, peft_config, current_key):
        if linear_features(target) is None:
            return LorettaAdpBlock(target, adapter_name, peft_config, self._hidden_size())
        return LorettaAdpLayer(target, adapter_name, self._side(peft_config, current_key), peft_config)

    def _update_existing(self, target, adapter_name, peft_config, current_key) -> None:
        target.update_layer(adapter_name, self._side(peft_config, current_key), peft_config)
