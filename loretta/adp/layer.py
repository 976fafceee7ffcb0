from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from ..layer_base import LorettaLayerBase

INPUT_SIDE, OUTPUT_SIDE = "input", "output"


class DenseAdapterLinear(nn.Linear):
    """A dense adapter projection (tensorized=False): float32 weights, as the TT cores are, used in the
    activations' dtype, as a TT layer casts its rebuilt matrix. In a bf16 / fp16 model a plain nn.Linear
    would fail (a matmul of half activations by float32 weights); the cast is in the graph, so the
    gradients reach the float32 weights, which the optimizer updates (see master_weights.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if weight.dtype != x.dtype:
            weight = weight.to(x.dtype)
            bias = None if bias is None else bias.to(x.dtype)
        return F.linear(x, weight, bias)


class LorettaAdpLayer(LorettaLayerBase):
    """A base layer plus bottleneck adapters: h + scaling * up(dropout(act(down(h)))).

    h is the layer's output (Houlsby placement) or, for input-side targets, its input.
    """

    adapter_layer_names = ("loretta_adp_down", "loretta_adp_up")
    other_param_names = ("side", "scaling", "activation", "loretta_adp_dropout")

    def __init__(self, base_layer: nn.Module, adapter_name: str, side: str, config,
                 features: tuple[int, int] | None = None):
        super().__init__(base_layer, features)
        self.loretta_adp_down = nn.ModuleDict()
        self.loretta_adp_up = nn.ModuleDict()
        self.loretta_adp_dropout = nn.ModuleDict()
        self.side: dict[str, str] = {}
        self.scaling: dict[str, float] = {}
        self.activation: dict[str, str] = {}
        self._activation_fn: dict[str, nn.Module] = {}  # ACT2FN[...] builds a module per lookup: keep one
        self.update_layer(adapter_name, side, config)

    def update_layer(self, adapter_name: str, side: str, config) -> None:
        if side not in (INPUT_SIDE, OUTPUT_SIDE):
            raise ValueError(f"adapter side {side!r} is not one of {[INPUT_SIDE, OUTPUT_SIDE]}")
        dim = self.in_features if side == INPUT_SIDE else self.out_features
        bottleneck = config.bottleneck_size
        if config.tensorized:
            down = self.make_tt(dim, bottleneck, config, bias=True, init="gaussian")
            up = self.make_tt(bottleneck, dim, config, bias=True, init=config.init_method)
        else:
            down, up = self._dense_pair(dim, bottleneck, config.init_method)
        self.loretta_adp_down[adapter_name] = down
        self.loretta_adp_up[adapter_name] = up
        self.loretta_adp_dropout[adapter_name] = (
            nn.Dropout(config.adapter_dropout) if config.adapter_dropout > 0 else nn.Identity()
        )
        self.side[adapter_name] = side
        self.scaling[adapter_name] = float(config.scaling)
        self.activation[adapter_name] = config.non_linearity
        self._activation_fn[adapter_name] = ACT2FN[config.non_linearity]
        self._finish_update(adapter_name)

    def _dense_pair(self, dim: int, bottleneck: int, init: str) -> tuple[nn.Linear, nn.Linear]:
        device = self._adapter_device()
        down = DenseAdapterLinear(dim, bottleneck, device=device)
        up = DenseAdapterLinear(bottleneck, dim, device=device)
        if device.type != "meta":
            with torch.no_grad():
                nn.init.zeros_(down.bias)
                nn.init.zeros_(up.bias)
                if init in ("identity", "noise_reduction"):  # dense: subtracting the initial matrix = zero init
                    nn.init.zeros_(up.weight)
                else:
                    nn.init.normal_(up.weight, std=(1.0 / (dim + bottleneck)) ** 0.5)
        return down, up

    def _adapter(self, name: str, h: torch.Tensor) -> torch.Tensor:
        hidden = self._activation_fn[name](self.loretta_adp_down[name](h))
        update = self.loretta_adp_up[name](self.loretta_adp_dropout[name](hidden))
        scaling = self.scaling[name]
        # the default scaling 1.0 skips an elementwise pass over the activations (forward and backward)
        return update if scaling == 1.0 else update * scaling

    def forward(self, x: torch.Tensor, *args, adapter_names=None, **kwargs) -> torch.Tensor:
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        if self.disable_adapters:
            return self.base_layer(x, *args, **kwargs)
        downs = self.loretta_adp_down
        active = [a for a in self.active_adapters if a in downs]  # listed once: this runs every token of generate
        for name in active:
            if self.side[name] == INPUT_SIDE:
                x = x + self._adapter(name, x)
        out = self.base_layer(x, *args, **kwargs)
        for name in active:
            if self.side[name] == OUTPUT_SIDE:
                out = out + self._adapter(name, out)
        return out

    def _mixed_batch_forward(self, x: torch.Tensor, *args, adapter_names, **kwargs) -> torch.Tensor:
        groups = self._mixed_sub_batches(x, adapter_names, self.loretta_adp_down)
        for name, index in groups:
            if self.side[name] == INPUT_SIDE:
                x = x.index_add(0, index, self._adapter(name, x[index]))
        out = self.base_layer(x, *args, **kwargs)
        for name, index in groups:
            if self.side[name] == OUTPUT_SIDE:
                out = out.index_add(0, index, self._adapter(name, out[index]))
        return out

    def delete_adapter(self, adapter_name: str) -> None:
        self._activation_fn.pop(adapter_name, None)  # not one of PEFT's per-adapter containers
        super().delete_adapter(adapter_name)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise ValueError(
            "LoRETTA_adp is a non-linear adapter and cannot be merged into the base weights; "
            "use unload() to drop it, or LoRETTA_rep for a mergeable method"
        )

    def unmerge(self) -> None:
        return None

    def __repr__(self) -> str:
        return "loretta_adp." + super().__repr__()


class LorettaAdpBlock(LorettaAdpLayer):
    """An adapter on the output of a whole block rather than a linear layer: a mixture-of-experts block (whose
    experts are 3-D parameters, not layers), or any module whose output is the hidden state (an MLP, an
    attention block), h = block(...), or the first element of the tuple the block returns (gpt-oss's and
    Llama 4's MoE blocks also return their router scores). Output side only: a block's input comes under
    whatever argument names its caller uses."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, width: int):
        super().__init__(base_layer, adapter_name, OUTPUT_SIDE, config, features=(width, width))

    def update_layer(self, adapter_name: str, side: str, config) -> None:
        if side != OUTPUT_SIDE:
            raise ValueError(f"LoRETTA_adp adapts a {type(self.base_layer).__name__} (not a linear layer) on its "
                             f"output only, not its {side}")
        super().update_layer(adapter_name, side, config)

    def _hidden(self, out) -> torch.Tensor:
        hidden = out[0] if isinstance(out, tuple) and out else out
        if not isinstance(hidden, torch.Tensor) or hidden.shape[-1] != self.out_features:
            what = (f"a {type(hidden).__name__}" if not isinstance(hidden, torch.Tensor)
                    else f"{hidden.shape[-1]} features")
            raise ValueError(
                f"LoRETTA_adp on a {type(self.base_layer).__name__} expects its output (or the first element of the "
                f"tuple it returns) to be the hidden state, {self.out_features} features wide; it returned {what}: "
                "target a module whose output is the hidden state"
            )
        return hidden

    def forward(self, *args, adapter_names=None, **kwargs):
        out = self.base_layer(*args, **kwargs)
        if self.disable_adapters:
            return out
        hidden = self._hidden(out)
        if adapter_names is not None:
            for name, index in self._mixed_sub_batches(hidden, adapter_names, self.loretta_adp_down):
                hidden = hidden.index_add(0, index, self._adapter(name, hidden[index]))
        else:
            downs = self.loretta_adp_down
            for name in [a for a in self.active_adapters if a in downs]:
                hidden = hidden + self._adapter(name, hidden)
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
