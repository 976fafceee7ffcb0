"""What the two LoRETTA tuner layers share: wrapping a base Linear/Conv1D (LoRETTA_adp: or a whole block) and
building TT factors."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .mixed_batch import BASE, sub_batches
from .presets import linear_features
from .tt_batch import adapters_changed
from .tt_linear import TTLinear
from .tt_shapes import resolve_tt_shape


class LorettaLayerBase(nn.Module, BaseTunerLayer):
    """A tuner layer around one base Linear/Conv1D; subclasses add their adapter ModuleDicts.

    `features` (in, out) is given for a base module that is not a linear layer (LoRETTA_adp's blocks)."""

    def __init__(self, base_layer: nn.Module, features: tuple[int, int] | None = None):
        nn.Module.__init__(self)
        features = features or linear_features(base_layer)
        if features is None:
            raise TypeError(
                f"LoRETTA can adapt nn.Linear and transformers Conv1D layers, not {type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.in_features, self.out_features = features
        self._disable_adapters = False
        self.merged_adapters = []

    def _base_weight(self) -> torch.Tensor:
        """The base layer's weight; a block's first parameter (a mixture of experts' router)."""
        base = self.get_base_layer()
        weight = getattr(base, "weight", None)
        return weight if isinstance(weight, torch.Tensor) else next(base.parameters())

    def _adapter_device(self) -> torch.device:
        return self._base_weight().device

    def make_tt(self, in_features: int, out_features: int, config, bias: bool, init: str,
                subtract_initial: bool = True, forward: str | None = None) -> TTLinear:
        shape = resolve_tt_shape(in_features, out_features, config.tt_shapes)
        return TTLinear(
            in_features, out_features, shape, config.tensor_rank, bias=bias, init=init, device=self._adapter_device(),
            subtract_initial=subtract_initial, forward=config.tt_forward if forward is None else forward,
        )

    def active_tt_layers(self) -> list[TTLinear]:
        """The TT layers this layer's forward will use (none while disabled or merged)."""
        if self.disable_adapters or self.merged:
            return []
        found = []
        for attr in self.adapter_layer_names:
            adapters = getattr(self, attr)
            found += [adapters[name] for name in self.active_adapters
                      if name in adapters and isinstance(adapters[name], TTLinear)]
        return found

    @staticmethod
    def factors_together(layers: list) -> list[tuple]:
        """After the TT layers are rebuilt together (tt_batch): whatever this layer type builds from
        them for every layer at once (LoRETTA_rep: its concatenated, scaled factors); returns the
        (layer, adapter name) pairs that now hold them. Nothing by default."""
        return []

    def activation_dtype(self) -> torch.dtype | None:
        """The dtype the adapters most likely see: the base weight's (None for quantized weights,
        whose compute dtype is the base layer's own business)."""
        dtype = self._base_weight().dtype
        return dtype if dtype.is_floating_point else None

    def _finish_update(self, adapter_name: str) -> None:
        # New adapters start active only if they are the active one (peft's convention).
        self.set_adapter(self.active_adapters)
        adapters_changed()

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        adapters_changed()

    def _mixed_sub_batches(self, x: torch.Tensor, adapter_names, adapters: nn.ModuleDict):
        """The (adapter, rows of x) groups of a mixed batch that this layer adapts."""
        if self.merged:
            raise ValueError(
                "adapter_names (mixed adapter batches) cannot be used while adapters are merged: "
                "call unmerge_adapter() first"
            )
        groups = sub_batches(x, adapter_names, type(self).__name__)
        return [(name, rows) for name, rows in groups if name != BASE and name in adapters]
