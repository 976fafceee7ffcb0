"""The trained weights and optimizer state of a run, whole, whether or not FSDP2 shards the model.

Under FSDP2 (`configs/accelerate/fsdp.yml`) each process holds a shard of every parameter (a
DTensor) and of its optimizer state: `named_parameters()` on the main process alone would save its
shard only. Here a sharded model's state is gathered whole onto the main process's CPU (the other
processes get an empty dict) and scattered back when loading, with torch's distributed state-dict
API; only trainable parameters are gathered, never the frozen base model. Every process must call
these functions, in the same order (they are collectives when the model is sharded). Unsharded
models keep the plain formats (checkpoints of either kind load as before).
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

# whole tensors on the CPU of the main process (rank 0), the other processes get {}
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
# every process loads the whole file and keeps its shard of each tensor
_SCATTER = StateDictOptions(full_state_dict=True, strict=False)


def is_sharded(model) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def prepare_generation(model) -> bool:
    """Make `model.generate()` work when FSDP2 shards the model; returns whether it does (then every process
    must decode in step with the others: generate(synced_gpus=True)). generate() runs the model's forward
    without calling the module, so FSDP would not gather the parameters of the root unit (embeddings, LM
    head): registered, a generate() call gathers them as a forward does."""
    if not is_sharded(model):
        return False
    if isinstance(model, FSDPModule):
        register_fsdp_forward_method(model, "generate")
    return True


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, whole, on the CPU (under FSDP: on the main process only)."""
    if not is_sharded(model):
        return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    gathered = get_model_state_dict(model, options=_GATHER)  # buffers too: keep the trainable parameters
    return {n: gathered[n] for n, p in model.named_parameters() if p.requires_grad and n in gathered}


def load_trainable_state(model, weights: dict[str, torch.Tensor]) -> list[str]:
    """Load `weights` (whole tensors, by name) into the model's parameters; returns the names the model
    does not have."""
    unexpected = sorted(set(weights) - {n for n, _ in model.named_parameters()})
    if unexpected:
        return unexpected
    if is_sharded(model):
        set_model_state_dict(model, weights, options=_SCATTER)
    else:
        model.load_state_dict(weights, strict=False)
    return []


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's state_dict; under FSDP its states whole, keyed by parameter name."""
    if not is_sharded(model):
        return optimizer.state_dict()
    return get_optimizer_state_dict(model, optimizer, options=_GATHER)


def load_optimizer_state(model, optimizer, state: dict) -> None:
    sharded = is_sharded(model)
    by_name = any(isinstance(key, str) for key in state.get("state", {}))
    if by_name != sharded and state.get("state"):
        written, now = ("a sharded (FSDP)", "unsharded") if by_name else ("an unsharded", "sharded (FSDP)")
        raise RuntimeError(f"the checkpoint's optimizer state was written by {written} run and this model is "
                           f"{now}: resume with the launch configuration that wrote it")
    if sharded:
        set_optimizer_state_dict(model, optimizer, state, options=_SCATTER)
    else:
        optimizer.load_state_dict(state)


def adapter_state(model) -> dict[str, torch.Tensor] | None:
    """What `save_pretrained(state_dict=...)` needs of a sharded PEFT model (its trainable parameters and
    buffers, whole; PEFT picks the adapter's own from them); None when unsharded (PEFT reads the model)."""
    if not is_sharded(model):
        return None
    return get_model_state_dict(model, options=_GATHER)
