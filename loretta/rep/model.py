from __future__ import annotations

import re
from contextlib import contextmanager

from torch import nn

from ..presets import fold_layer_indices
from ..tuner_base import LorettaTunerBase, _excluded, _in_selected_layers
from .experts import ParamWrapper, stacked_expert_weight_error
from .layer import LorettaRepLayer, LorettaRepTunerLayer

# parameters inside adapters (the TT cores) or inside PEFT's modules_to_save copies are never targets
_ADAPTER_OR_COPY = re.compile(r"(^|\.)(loretta_\w+|modules_to_save|original_module)(\.|$)")


def expert_weights_to_adapt(model: nn.Module, config) -> list[str]:
    """The full names of the parameters `config.target_parameters` names (a name, or a dotted suffix of one,
    as PEFT matches them) in the layers selected by layers_to_transform / exclude_modules. An error for a
    name that matches nothing, listing the model's stacked expert weights, and for a match that is not one."""
    targets = config.target_parameters
    matched, stacked = {t: [] for t in targets}, {}
    for module_name, module in model.named_modules():
        plain = re.sub(r"\.base_layer(?=\.|$)", "", module_name)  # a weight another adapter already wraps
        if _ADAPTER_OR_COPY.search(plain):
            continue
        for param_name, param in module.named_parameters(recurse=False):
            key = f"{plain}.{param_name}" if plain else param_name
            problem = stacked_expert_weight_error(key, param, module)
            if problem is None:
                stacked.setdefault(fold_layer_indices(key), None)
            for target in targets:
                if key == target or key.endswith(f".{target}"):
                    if problem:
                        raise ValueError(problem)
                    matched[target].append((plain, key))
    unmatched = [t for t, found in matched.items() if not found]
    if unmatched:
        raise ValueError(
            f"target_parameters {unmatched} match no parameter of this model; its stacked expert weights: "
            f"{list(stacked) or 'none'}"
        )
    chosen = sorted({key for found in matched.values() for module_name, key in found
                     if _in_selected_layers(module_name, config)
                     and not _excluded(module_name, config.exclude_modules)})
    if not chosen:
        raise ValueError(
            f"target_parameters {targets} with layers_to_transform={config.layers_to_transform!r}, "
            f"exclude_modules={config.exclude_modules!r} select no weight of this model"
        )
    return chosen


class LorettaRepModel(LorettaTunerBase):
    """PEFT tuner adding LoRETTA_rep (TT-factored LoRA) updates (see LorettaRepConfig)."""

    prefix = "loretta_rep_"
    tuner_layer_cls = LorettaRepTunerLayer  # both layer kinds: PEFT activates, freezes and deletes through it

    def _default_targets(self, preset, config) -> None:
        config.target_modules = list(preset.rep_targets)

    def _new_layer(self, target, adapter_name, peft_config, current_key):
        return LorettaRepLayer(target, adapter_name, peft_config)

    def _update_existing(self, target, adapter_name, peft_config, current_key) -> None:
        target.update_layer(adapter_name, peft_config)

    # stacked expert weights (target_parameters, rep/experts.py)

    def _check_new_adapter_config(self, config) -> None:
        super()._check_new_adapter_config(config)
        # as PEFT's LoRA: which weight an expert adapter belongs to is its place in the nesting of
        # wrappers around one module, which must be the same for every adapter
        wanted = set(config.target_parameters or ())
        for name, other in self.peft_config.items():
            theirs = set(getattr(other, "target_parameters", None) or ())
            if other is not config and wanted and theirs and theirs != wanted:
                raise ValueError(
                    f"every adapter with target_parameters must name the same ones: {sorted(wanted)} for the new "
                    f"adapter, {sorted(theirs)} for adapter {name!r}"
                )

    def _inject_parameters(self, peft_config, model, adapter_name, low_cpu_mem_usage):
        # PEFT matches target_parameters by name alone; the weights chosen here also follow
        # layers_to_transform and exclude_modules, and a name matching nothing is an error
        requested = peft_config.target_parameters
        peft_config.target_parameters = expert_weights_to_adapt(model, peft_config)
        try:
            return super()._inject_parameters(peft_config, model, adapter_name, low_cpu_mem_usage)
        finally:
            peft_config.target_parameters = requested

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key,
                            parameter_name=None, **kwargs):
        if parameter_name is None:
            super()._create_and_replace(peft_config, adapter_name, target, target_name, parent, current_key, **kwargs)
            return
        if isinstance(target, ParamWrapper) and target.parameter_name == parameter_name:
            target.update_layer(adapter_name, peft_config)
            return
        wrapper = ParamWrapper(target, adapter_name, parameter_name, peft_config)
        if adapter_name not in self.active_adapters:
            wrapper.requires_grad_(False)
        self._replace_module(parent, target_name, wrapper, target)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        adapter_names = kwargs.get("adapter_names")
        if adapter_names is not None:
            # the experts' update is in their weight, shared by every token of the batch
            wanted = set(adapter_names) | set(self.active_adapters)
            held = sorted({name for module in self.model.modules() if isinstance(module, ParamWrapper)
                           for name in module.loretta_rep_A if name in wanted})
            if held:
                raise ValueError(
                    f"adapter_names (mixed adapter batches): adapters {held} adapt stacked expert weights "
                    "(target_parameters), whose update is in the weight all samples share; run each adapter's "
                    "samples in their own batch"
                )
        with super()._enable_peft_forward_hooks(*args, **kwargs):
            yield
