from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..layer_base import LorettaLayerBase


class LorettaRepLayer(LorettaLayerBase):
    """A base layer plus LoRA updates whose factors are TT layers: y = base(x) + B(A(dropout(x))) * scaling."""

    adapter_layer_names = ("loretta_rep_A", "loretta_rep_B")
    other_param_names = ("r", "scaling", "loretta_rep_dropout")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config):
        super().__init__(base_layer)
        self.loretta_rep_A = nn.ModuleDict()
        self.loretta_rep_B = nn.ModuleDict()
        self.loretta_rep_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config) -> None:
        self.loretta_rep_A[adapter_name] = self.make_tt(self.in_features, config.r, config, bias=False, init="gaussian")
        self.loretta_rep_B[adapter_name] = self.make_tt(
            config.r, self.out_features, config, bias=False, init=config.init_method
        )
        self.loretta_rep_dropout[adapter_name] = (
            nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        )
        self.r[adapter_name] = config.r
        self.scaling[adapter_name] = config.lora_alpha / config.r
        self._finish_update(adapter_name)

    def _active(self) -> list[str]:
        return [a for a in self.active_adapters if a in self.loretta_rep_A]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        out = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return out
        for name in self._active():
            a, b = self.loretta_rep_A[name], self.loretta_rep_B[name]
            out = out + b(a(self.loretta_rep_dropout[name](x))) * self.scaling[name]
        return out

    # merging

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The update in the base layer's weight layout (out x in for Linear, in x out for Conv1D)."""
        delta = self.loretta_rep_A[adapter_name].weight_matrix() @ self.loretta_rep_B[adapter_name].weight_matrix()
        delta = delta * self.scaling[adapter_name]
        return delta if isinstance(self.get_base_layer(), Conv1D) else delta.t()

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        names = self._active() if adapter_names is None else [a for a in adapter_names if a in self.loretta_rep_A]
        base = self.get_base_layer()
        for name in names:
            if name in self.merged_adapters:
                continue
            delta = self.get_delta_weight(name).detach()
            merged = base.weight.data + delta.to(base.weight.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs or infs found while merging adapter {name!r}; the adapter seems broken")
            base.weight.data = merged
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            base.weight.data -= self.get_delta_weight(name).detach().to(base.weight.dtype)

    def __repr__(self) -> str:
        return "loretta_rep." + super().__repr__()
