"""Rebuilding the matrices of many TT layers at once.

Each TT layer rebuilds its dense matrix from its cores on every forward: a handful of tiny
products, forward and backward. On a GPU each is a kernel launch whatever its size, and a
LLaMA-2-7B LoRETTA_adp model has 192 TT layers: thousands of launches per step that LoRA does not
make (`scripts/bench_methods.py --flops-only` counts them). Layers of one structure (shape, rank,
in/out sizes) are therefore rebuilt together: their cores are stacked and contracted with the same
few batched products, once per model forward, and each layer is handed its slice (TTLinear.hold).
Layers that multiply by their factors (TTLinear.multiplies_by_factors) get their factors the
same way. The values are those of each layer's own rebuild (the same products, stacked); a layer
whose cores change afterwards (an optimizer step, a load) rebuilds its own again. Each tuner layer
type may then build what it needs from those matrices for all its layers at once
(`factors_together`: LoRETTA_rep's concatenated, scaled, cast factors).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.distributed.tensor import DTensor

from transformers.cache_utils import Cache

from .tt_linear import (TTLinear, begin_checked_pass, begin_weights_epoch, difference_factors, end_checked_pass,
                        stacked_factors, stacked_matrix)


def _stacked(group: list[TTLinear], factors: bool) -> tuple:
    """The group's (matrices (G x in x out),), or its factors (Lt (G x k x in), R (G x k x out))."""
    first = group[0]
    cores = [torch.stack(same) for same in zip(*(list(layer.cores) for layer in group))]
    initial = None
    if first.subtracts_initial():
        initial = [torch.stack(same) for same in zip(*(layer.initial_cores.tensors() for layer in group))]
    if factors:
        left, right = stacked_factors(cores, first.split)
        if initial is None:
            return difference_factors(left, right)
        with torch.no_grad():
            left0, right0 = stacked_factors(initial, first.split)
        return difference_factors(left, right, left0, right0)
    size = (first.in_features, first.out_features, first.split)
    matrices = stacked_matrix(cores, *size)
    if initial is not None:
        # the initial product by the same stacked products, so W is exactly 0 at step 0
        with torch.no_grad():
            initial_matrices = stacked_matrix(initial, *size)
        matrices = matrices - initial_matrices
    return (matrices,)


def _per_layer(parts, factors: bool) -> list:
    """Each layer's slice of the stacked matrices, or its (Lt, R) pair."""
    slices = [t.unbind(0) for t in parts]
    return list(zip(*slices)) if factors else list(slices[0])


def rebuild_together(layers: list[TTLinear], dtypes: list[torch.dtype | None] | None = None) -> list[TTLinear]:
    """Rebuild the matrices (or factors) of `layers`, grouped by structure; `dtypes`: each layer's
    expected activation dtype, to which they and the bias are cast in the same batched step (None: none).
    Returns the layers that now hold what their forward will use (those in groups of two or more)."""
    held: list[TTLinear] = []
    groups: dict[tuple, list[TTLinear]] = defaultdict(list)
    for layer, dtype in zip(layers, dtypes or [None] * len(layers)):
        groups[(layer.batch_key(), dtype, layer.bias is not None)].append(layer)
    for (_, dtype, has_bias), group in groups.items():
        if len(group) < 2:
            continue  # nothing to share: the layer rebuilds its own
        held += group
        factors = group[0].multiplies_by_factors(group[0].first_core().device)
        if all(layer.holds_current("factors" if factors else "matrix", dtype) for layer in group):
            continue  # a forward without a graph, cores unchanged (generation: every new token)
        parts = _stacked(group, factors)
        casts = [None] * len(group)
        if dtype is not None and dtype != parts[0].dtype:  # e.g. fp32 cores in a bf16 model: cast once
            cast_operands = _per_layer([t.to(dtype) for t in parts], factors)
            cast_biases = torch.stack([layer.bias for layer in group]).to(dtype).unbind(0) if has_bias else None
            casts = [(dtype, cast_operands[i], cast_biases[i] if has_bias else None) for i in range(len(group))]
        for layer, operands, cast in zip(group, _per_layer(parts, factors), casts):
            layer.hold("factors" if factors else "matrix", operands, cast)
    return held


# the model's LoRETTA tuner layers, found once rather than by walking every module at every forward
# (each token of generate); inject_adapter, the only place that creates them, forgets the list
_TUNER_LAYERS = "_loretta_tuner_layers"


# Which held operands a forward without a graph uses (each token of generate) changes only when the
# adapters do: added, deleted, activated, enabled or disabled, merged. The pre-hook then does not work
# out again which layers are active and how they group, but remembers that from the last such forward
# and only checks that each of those layers still holds what matches its cores (the one check that
# sees an optimizer step or a load). Whatever this plan misses, a layer it does not list checks its
# own held operands in its forward, so a stale plan costs time, never correctness.
_NO_GRAPH_PLAN = "_loretta_no_graph_plan"
_adapters_epoch = 0


def forget_tuner_layers(model) -> None:
    model.__dict__.pop(_TUNER_LAYERS, None)
    model.__dict__.pop(_NO_GRAPH_PLAN, None)


def adapters_changed() -> None:
    """Called by the tuner layers when an adapter is added or deleted: every remembered plan is redone."""
    global _adapters_epoch
    _adapters_epoch += 1


def _adapter_flags(modules) -> tuple:
    # PEFT's per-layer state, read directly (this runs every token): active adapters, disabled, merged
    return _adapters_epoch, tuple([(m.__dict__.get("_active_adapter"), m.__dict__.get("_disable_adapters"),
                                    len(m.__dict__.get("merged_adapters") or ())) for m in modules])


def _plan_still_holds(model, flags: tuple) -> bool:
    """Whether the last no-graph forward's layers still hold what matches their cores, with the adapters
    as they were (`flags`); if so, they are marked as checked for this forward."""
    plan = model.__dict__.get(_NO_GRAPH_PLAN)
    if plan is None or plan[0] != flags:
        return False
    _, tt_layers, factor_holders = plan
    if not all(layer.held_is_current() for layer in tt_layers):
        return False
    if not all(module.held_factors_current(name) for module, name in factor_holders):
        return False
    for layer in tt_layers:
        layer.mark_checked()
    for module, name in factor_holders:
        module.mark_factors_checked(name)
    return True


def _tuner_layers(model) -> list:
    from .layer_base import LorettaLayerBase

    layers = model.__dict__.get(_TUNER_LAYERS)
    if layers is None:
        layers = [module for module in model.modules() if isinstance(module, LorettaLayerBase)]
        model.__dict__[_TUNER_LAYERS] = layers
    return layers


def _sharded(layer: TTLinear) -> bool:
    """Whether the layer's cores are not whole just now: under FSDP2 (`fully_shard` on each decoder layer)
    they are shards (DTensors) outside that layer's own forward, where FSDP gathers them; cores missing from
    the module (a wrapper that took them over) count the same. Stacking shards of different layers is
    meaningless, so such a layer builds its own in its forward, as a lone one does."""
    first = next(iter(layer.cores._parameters.values()), None)
    return first is None or isinstance(first, DTensor)


def continues_a_cache(kwargs) -> bool:
    """Whether this forward continues a KV cache that holds tokens already (a decoding step of generate)."""
    for value in (kwargs or {}).values():
        if isinstance(value, Cache):
            return value.get_seq_length() > 0
    return False


def rebuild_before_forward(model, args, kwargs=None) -> None:
    """Forward pre-hook on the adapted model (with its keyword arguments): rebuild the active adapters' TT
    layers together. The matrices stay held after the forward: a checkpointed layer recomputed in the
    backward pass must see the same ones. They give way when the cores change (an optimizer step) or the
    next forward rebuilds; a forward that wants no graph and continues a KV cache (each new token of
    generate) reuses them while the cores stay as they are, checked here once for the whole forward
    (tt_linear.begin_checked_pass). Any other forward begins a new epoch (tt_linear.begin_weights_epoch),
    so it rebuilds whatever changed, through `.data` too."""
    if torch.compiler.is_compiling():
        return  # compiled, the rebuilds are part of the graph
    continues = continues_a_cache(kwargs)
    if not continues:
        begin_weights_epoch()
    begin_checked_pass()  # a forward without a graph: the layers checked below need not check again
    modules = _tuner_layers(model)
    flags = _adapter_flags(modules) if not torch.is_grad_enabled() else None  # None: a graph is wanted
    if flags is not None and continues and _plan_still_holds(model, flags):
        return
    layers, dtypes, by_type = [], [], defaultdict(list)
    for module in modules:
        found = module.active_tt_layers()
        if found and _sharded(found[0]):
            continue
        layers += found
        dtypes += [module.activation_dtype()] * len(found)
        by_type[type(module)].append(module)
    held = rebuild_together(layers, dtypes)
    factor_holders = []
    for layer_type, of_type in by_type.items():
        factor_holders += layer_type.factors_together(of_type)
    if flags is not None:
        # a TT layer whose product is held as factors (LoRETTA_rep's A and B) is checked with them
        covered = {id(tt) for module, name in factor_holders for tt in module.factor_tt_layers(name)}
        model.__dict__[_NO_GRAPH_PLAN] = (flags, [tt for tt in held if id(tt) not in covered], factor_holders)


def after_forward(model, args, output) -> None:
    """Forward hook on the adapted model (also run when the forward raises): what the pre-hook checked
    holds for that forward only."""
    if not torch.compiler.is_compiling():  # compiled, the pre-hook began no checked pass
        end_checked_pass()
