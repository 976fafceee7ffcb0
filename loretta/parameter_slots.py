"""Run a module's forward with other tensors in its parameter slots.

What torch.func.functional_call does, without calling the module: the callers here stand in for the
module's forward themselves (an instance attribute), so calling the module again would re-enter them.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def parameters_replaced(module: nn.Module, tensors: dict[str, torch.Tensor]):
    """For the duration, each (dotted) parameter name of `module` in `tensors` holds that tensor."""
    slots = []
    for name, tensor in tensors.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        slots.append((owner, leaf, owner._parameters[leaf]))
        owner._parameters[leaf] = tensor
    try:
        yield
    finally:
        for owner, leaf, original in reversed(slots):
            owner._parameters[leaf] = original
