"""LoRETTA_rep on a mixture of experts' stacked weights (`target_parameters`, as PEFT's LoRA has it).

transformers keeps an MoE block's experts as one module holding 3-D parameters, e.g. Qwen3-MoE's
`mlp.experts.gate_up_proj` (experts x out x in): no nn.Linear per expert for a tuner layer to wrap.
Each expert gets its own LoRETTA_rep update instead, dW_e = A_e @ B_e * lora_alpha / r with A_e and
B_e TT layers, as LoRA gives each expert its own A_e, B_e there. The experts' factors share one
shape, so their cores are stacked (`StackedTT`) and all experts' factors rebuild with the same few
batched products. The experts module runs its own forward (whichever of transformers' experts
kernels it is set to) on W + dW, handed to it for that call with torch.func.functional_call: the
update cannot be applied to the input, as the routing of tokens to experts happens inside. So an
input dropout cannot apply here either (PEFT's LoRA refuses it alike).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..tt_batch import adapters_changed
from ..tt_shapes import resolve_tt_shape
from ..tt_stack import StackedTT
from .config import check_no_dropout_on_parameters
from .layer import LorettaRepTunerLayer, lora_factors


def stacked_expert_weight_error(name: str, param, module: nn.Module) -> str | None:
    """Why LoRETTA_rep cannot adapt parameter `name` of `module` through target_parameters (None: it can)."""
    if param.ndim != 3 or not param.dtype.is_floating_point:
        found = f"has shape {tuple(param.shape)} and dtype {param.dtype}"
    elif type(module).__module__.startswith("torch.nn.") or getattr(module, "num_experts", len(param)) != len(param):
        # e.g. a linear-attention layer's nn.Conv1d weight (channels x 1 x kernel), 3-D as well
        found = f"is a weight of {type(module).__name__}, not a stack of experts"
    else:
        return None
    return (f"target_parameters: {name} {found}; LoRETTA_rep adapts stacked expert weights there (3-D, experts x "
            "out x in, floating point, in a module holding experts); adapt linear layers with target_modules")


class ParamWrapper(nn.Module, LorettaRepTunerLayer):
    """LoRETTA_rep on one stacked expert weight of the module it wraps (`parameter_name`). Two weights of
    one module are two wrappers, one around the other.

    Named as PEFT's LoRA counterpart: PEFT's parameter injection (BaseTuner._inject_parameters)
    recognises a wrapper it may nest or add an adapter to by that class name."""

    other_param_names = ("r", "scaling")

    def __init__(self, base_layer: nn.Module, adapter_name: str, parameter_name: str, config):
        nn.Module.__init__(self)
        self.base_layer = base_layer
        self.parameter_name = parameter_name
        self._disable_adapters = False
        self.merged_adapters = []
        param = self.get_param()
        problem = stacked_expert_weight_error(parameter_name, param, self.get_base_layer())
        if problem:
            raise ValueError(problem)
        # transformers' experts store each expert's weight as F.linear takes it (out x in), or, where the
        # experts module says is_transposed (GPT-OSS), as (in x out). Llama 4's are (in x out) without saying
        # so: there the sides swap names, which only decides which factor gets which TT shape; the update is
        # a rank-r matrix of the weight's shape either way
        self.transposed = bool(getattr(self.get_base_layer(), "is_transposed", False))
        self.num_experts, rows, cols = param.shape
        self.in_features, self.out_features = (rows, cols) if self.transposed else (cols, rows)
        self.loretta_rep_A = nn.ModuleDict()
        self.loretta_rep_B = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.update_layer(adapter_name, config)

    def get_param(self) -> nn.Parameter:
        return getattr(self.get_base_layer(), self.parameter_name)

    def update_layer(self, adapter_name: str, config) -> None:
        check_no_dropout_on_parameters(config)  # also for a config changed after it was made
        device = self.get_param().device
        noise_reduction = config.init_method == "noise_reduction"
        # as LorettaRepLayer.update_layer, per expert
        shape_a = resolve_tt_shape(self.in_features, config.r, config.tt_shapes)
        shape_b = resolve_tt_shape(config.r, self.out_features, config.tt_shapes)
        self.loretta_rep_A[adapter_name] = StackedTT(
            self.num_experts, self.in_features, config.r, shape_a, config.tensor_rank,
            "noise_reduction" if noise_reduction else "gaussian", device)
        self.loretta_rep_B[adapter_name] = StackedTT(
            self.num_experts, config.r, self.out_features, shape_b, config.tensor_rank, config.init_method, device)
        self.r[adapter_name] = config.r
        self.scaling[adapter_name] = config.lora_alpha / config.r
        self.set_adapter(self.active_adapters)  # a new adapter starts active only if it is the active one
        adapters_changed()

    def _factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A^T (experts x k x in), B * scaling (experts x k x out)): their product is the update."""
        a_layer, b_layer = self.loretta_rep_A[name], self.loretta_rep_B[name]
        if b_layer.initial_cores is None:
            a_t, b = lora_factors(a_layer.matrices(), b_layer.matrices())
        else:
            a_t, b = lora_factors(a_layer.matrices(), b_layer.matrices(), a_layer.initial_matrices(),
                                   b_layer.initial_matrices(negated=True))
        return a_t, b * self.scaling[name]

    def _plus_update(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        """weight + the update of adapter `name`, in the weight's layout and dtype: one batched product."""
        a_t, b = (t.to(weight.dtype) for t in self._factors(name))
        if self.transposed:
            return torch.baddbmm(weight, a_t.mT, b)  # (experts x in x out)
        return torch.baddbmm(weight, b.mT, a_t)  # (experts x out x in)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The update of every expert, in the parameter's layout, float32."""
        a_t, b = self._factors(adapter_name)
        return a_t.mT @ b if self.transposed else b.mT @ a_t

    def forward(self, *args, **kwargs):
        # a mixed batch's names reach every tuner layer; the tuner refuses one naming an adapter held here
        # (LorettaRepModel._enable_peft_forward_hooks), so this one runs the experts as they are
        kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(*args, **kwargs)
        active = self._active()
        if self.merged or not active:
            return self.base_layer(*args, **kwargs)
        weight = self.get_param()
        for name in active:
            weight = self._plus_update(weight, name)
        # the path from base_layer to the weight: through the wrappers of the module's other weights
        path, module = [], self.base_layer
        while isinstance(module, ParamWrapper):
            path.append("base_layer")
            module = module.base_layer
        key = ".".join([*path, self.parameter_name])
        return functional_call(self.base_layer, {key: weight}, args, kwargs, tie_weights=False, strict=False)

    # merging

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        param = self.get_param()
        for name in self._adapters_to_merge(adapter_names):
            with torch.no_grad():
                merged = param.data + self.get_delta_weight(name).to(param.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs or infs found while merging adapter {name!r}; the adapter seems broken")
            param.data = merged
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        param = self.get_param()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            with torch.no_grad():
                param.data = param.data - self.get_delta_weight(name).to(param.dtype)

    def unload_and_optionally_merge_module(self, merge: bool, safe_merge: bool, adapter_names):
        """PEFT's unloading calls this on the outermost wrapper of a module: the wrappers of its other
        weights, inside, are merged too, and the experts module itself is what stays."""
        wrapper = self
        while isinstance(wrapper, ParamWrapper):
            if merge:
                wrapper.merge(safe_merge=safe_merge, adapter_names=adapter_names)
            wrapper = wrapper.base_layer
        return wrapper

    def __repr__(self) -> str:
        return "loretta_rep." + super().__repr__()
