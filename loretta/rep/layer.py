from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..layer_base import LorettaLayerBase
from ..quantized import add_to_weight
from ..tt_linear import checked_in_this_pass, current_checked_pass, graph_wanted, held_is_stale


def lora_factors(a, b, a0=None, negated_b0=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A^T, B), or with noise reduction ([A | A0]^T, [B ; -B0]), whose product is A @ B - A0 @ B0; for
    one layer (A in x r, B r x out) or a stack of them (G x ...). A^T comes out contiguous."""
    if a0 is None:
        return a.mT.contiguous(), b
    return torch.cat([a.mT, a0.mT], dim=-2), torch.cat([b, negated_b0], dim=-2)


class LorettaRepTunerLayer(BaseTunerLayer):
    """What PEFT looks for (the tuner's tuner_layer_cls) to activate, freeze and delete LoRETTA_rep adapters:
    the layer around a linear layer (LorettaRepLayer) and the one around a stacked expert weight
    (experts.ParamWrapper)."""

    adapter_layer_names = ("loretta_rep_A", "loretta_rep_B")

    def _active(self) -> list[str]:
        return [a for a in self.active_adapters if a in self.loretta_rep_A]

    def _adapters_to_merge(self, adapter_names) -> list[str]:
        """What merge() adds: the adapters named (default: the active ones) that this layer holds, unmerged."""
        names = self._active() if adapter_names is None else [a for a in adapter_names if a in self.loretta_rep_A]
        return [name for name in names if name not in self.merged_adapters]


class LorettaRepLayer(LorettaLayerBase, LorettaRepTunerLayer):
    """A base layer plus LoRA updates whose factors are TT layers: y = base(x) + B(A(dropout(x))) * scaling."""

    other_param_names = ("r", "scaling", "loretta_rep_dropout")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config):
        super().__init__(base_layer)
        self.loretta_rep_A = nn.ModuleDict()
        self.loretta_rep_B = nn.ModuleDict()
        self.loretta_rep_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        # per adapter: (dtype, A^T, B * scaling, the cores' state) built for the whole model at once (factors_together)
        self._held_factors: dict[str, tuple] = {}
        self._factors_checked_in: dict[str, object] = {}  # as TTLinear._checked_in, per adapter
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config) -> None:
        # noise_reduction removes the initial product A0 @ B0 (not each factor's: zeroing both factors
        # would leave no gradient at all), so both factors keep their initial cores unsubtracted.
        # The factors are used as matrices (_factors): the update is already a rank-r product.
        noise_reduction = config.init_method == "noise_reduction"
        self.loretta_rep_A[adapter_name] = self.make_tt(
            self.in_features, config.r, config, bias=False, init="noise_reduction" if noise_reduction else "gaussian",
            subtract_initial=False, forward="matrix",
        )
        self.loretta_rep_B[adapter_name] = self.make_tt(
            config.r, self.out_features, config, bias=False, init=config.init_method, subtract_initial=False,
            forward="matrix",
        )
        self.loretta_rep_dropout[adapter_name] = (
            nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        )
        self.r[adapter_name] = config.r
        self.scaling[adapter_name] = config.lora_alpha / config.r
        self._finish_update(adapter_name)

    def activation_dtype(self) -> None:
        return None  # the factors are cast after [A | A0] is put together (_factors), not by TTLinear

    def forward(self, x: torch.Tensor, *args, adapter_names=None, **kwargs) -> torch.Tensor:
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        out = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return out
        for name in self._active():
            out = out + self._update(name, x)
        return out

    def _update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a_t, b_scaled = self._scaled_factors(name, x.dtype)
        h = self.loretta_rep_dropout[name](x)
        return F.linear(h, a_t) @ b_scaled

    def _scaled_factors(self, name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(A^T, B * scaling) in `dtype`: those built with the other layers' (factors_together) while the
        cores stay as they are, else this layer's own. The scaling goes on the small (k x out) factor,
        not on the (tokens x out) product: one elementwise pass over the activations less, forward and
        backward (exact for the default lora_alpha / r = 2, a power of two)."""
        held = self._valid_held_factors(name)
        if held is not None:
            held_dtype, a_t, b_scaled = held
            return (a_t, b_scaled) if held_dtype == dtype else (a_t.to(dtype), b_scaled.to(dtype))
        a_t, b = self._factors(name)
        return a_t.to(dtype), (b * self.scaling[name]).to(dtype)

    def factor_tt_layers(self, name: str) -> tuple:
        """The TT layers whose matrices the held factors of `name` are made of (their state is part of
        the factors' state, so checking the factors checks them)."""
        return self.loretta_rep_A[name], self.loretta_rep_B[name]

    def _factors_state(self, name: str) -> tuple:
        a, b = self.factor_tt_layers(name)
        return a._state_key(), b._state_key(), self.scaling[name]

    def _holds_current_factors(self, name: str, dtype: torch.dtype) -> bool:
        """Whether the held factors of `name` serve a forward that wants no graph, as TTLinear.holds_current."""
        if graph_wanted(self.loretta_rep_A[name].first_core().requires_grad):
            return False
        held = self._valid_held_factors(name)
        current = held is not None and held[0] == dtype
        if current:
            self.mark_factors_checked(name)
        return current

    def _valid_held_factors(self, name: str):
        held = self._held_factors.get(name)
        if held is None or torch.compiler.is_compiling():
            return None
        dtype, a_t, b_scaled, state = held
        if checked_in_this_pass(self._factors_checked_in.get(name)):
            return dtype, a_t, b_scaled
        if held_is_stale(state, self._factors_state(name), a_t, self.loretta_rep_A[name].first_core().requires_grad):
            del self._held_factors[name]
            return None
        return dtype, a_t, b_scaled

    def held_factors_current(self, name: str) -> bool:
        """Whether the held factors of `name` were put together from the cores and scaling as they are now."""
        held = self._held_factors.get(name)
        return held is not None and held[3] == self._factors_state(name)

    def mark_factors_checked(self, name: str) -> None:
        """As TTLinear.mark_checked, for the factors of `name`."""
        self._factors_checked_in[name] = current_checked_pass()

    @staticmethod
    def factors_together(layers: list[LorettaRepLayer]) -> list[tuple[LorettaRepLayer, str]]:
        """Put together every active adapter's (A^T, B * scaling) for the model's forward, stacked by
        structure: one concatenation with A0 / -B0, one scaling and one cast per group of same-shaped
        layers instead of per layer (operators that each cost a kernel launch on a GPU). Runs after
        tt_batch.rebuild_together, whose matrices it stacks; the values are those of each layer's
        own _scaled_factors."""
        groups, holders = defaultdict(list), []
        for layer in layers:
            if layer.disable_adapters or layer.merged:
                continue
            dtype = layer.get_base_layer().weight.dtype
            for name in layer._active():
                a, b = layer.loretta_rep_A[name], layer.loretta_rep_B[name]
                key = (a.batch_key(), b.batch_key(), layer.scaling[name], dtype if dtype.is_floating_point else None)
                groups[key].append((layer, name))
        for (_, _, scaling, dtype), group in groups.items():
            if len(group) < 2:
                continue  # nothing to share
            holders += group
            pairs = [(layer.loretta_rep_A[name], layer.loretta_rep_B[name]) for layer, name in group]
            cast = dtype if dtype is not None else pairs[0][0].cores[0].dtype
            if all(layer._holds_current_factors(name, cast) for layer, name in group):
                continue  # a forward without a graph, cores unchanged (generation: every new token)
            stacked = [torch.stack([a.weight_matrix() for a, _ in pairs]),  # G x in x r
                       torch.stack([b.weight_matrix() for _, b in pairs])]  # G x r x out
            if pairs[0][1].initial_cores is not None:
                with torch.no_grad():
                    stacked += [torch.stack([a.initial_matrix() for a, _ in pairs]),
                                torch.stack([b.negated_initial_matrix() for _, b in pairs])]
            a_t, b = lora_factors(*stacked)
            b_scaled = b * scaling
            a_t, b_scaled = a_t.to(cast), b_scaled.to(cast)
            for (layer, name), a_i, b_i in zip(group, a_t.unbind(0), b_scaled.unbind(0)):
                layer._held_factors[name] = (cast, a_i, b_i, layer._factors_state(name))
                layer.mark_factors_checked(name)
        return holders

    def delete_adapter(self, adapter_name: str) -> None:
        # the held factors of a deleted adapter would keep its tensors (and their graph) alive
        self._held_factors.pop(adapter_name, None)
        self._factors_checked_in.pop(adapter_name, None)
        super().delete_adapter(adapter_name)

    def __getstate__(self):
        # copies (deepcopy, pickle) build their own: held factors may carry an autograd graph
        state = dict(super().__getstate__())
        state["_held_factors"] = {}
        state["_factors_checked_in"] = {}
        return state

    def _mixed_batch_forward(self, x: torch.Tensor, *args, adapter_names, **kwargs) -> torch.Tensor:
        groups = self._mixed_sub_batches(x, adapter_names, self.loretta_rep_A)
        out = self.base_layer(x, *args, **kwargs)
        for name, index in groups:
            out = out.index_add(0, index, self._update(name, x[index]).to(out.dtype))
        return out

    def _factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A^T (k x in), B (k x out)) whose product A @ B is the update before scaling. With
        noise_reduction, [A | A0] @ [B ; -B0] = A @ B - A0 @ B0: one pair of matmuls of width 2r.
        A is (k x in) contiguous, as an nn.Linear weight: x @ A in that layout, and its backward,
        ran 2x faster on this project's CPU than with A stored (in x k) (tt_linear.difference_factors)."""
        a_layer, b_layer = self.loretta_rep_A[name], self.loretta_rep_B[name]
        if b_layer.initial_cores is None:
            return lora_factors(a_layer.weight_matrix(), b_layer.weight_matrix())
        return lora_factors(a_layer.weight_matrix(), b_layer.weight_matrix(), a_layer.initial_matrix(),
                             b_layer.negated_initial_matrix())

    # merging

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The update in the base layer's weight layout (out x in for Linear, in x out for Conv1D)."""
        a_t, b = self._factors(adapter_name)
        delta = (a_t.t() @ b) * self.scaling[adapter_name]
        return delta if isinstance(self.get_base_layer(), Conv1D) else delta.t()

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        base = self.get_base_layer()
        for name in self._adapters_to_merge(adapter_names):
            add_to_weight(base, self.get_delta_weight(name).detach(), safe_merge=safe_merge, adapter_name=name)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            add_to_weight(base, -self.get_delta_weight(name).detach(), safe_merge=False, adapter_name=name)

    def __repr__(self) -> str:
        return "loretta_rep." + super().__repr__()
