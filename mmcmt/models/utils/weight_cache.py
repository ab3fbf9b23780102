"""Weights derived from a module's parameters (BatchNorms folded, kernels
plus the identity), computed once and kept until a parameter changes."""
from typing import Callable

import torch
import torch.nn as nn


def derived(module: nn.Module, compute: Callable, *args):
    """``compute(module, *args)`` under no_grad, kept on ``module`` until one
    of its parameters or buffers is replaced, moved or changed in place (its
    version counter), so that loading weights or a training step is never
    missed. ``compute`` is a module-level function; ``args`` (say, a dtype)
    are part of the cache key."""
    key = tuple(
        (t.data_ptr(), t._version, t.dtype) for t in tensors_of(module))
    cache = module.__dict__.setdefault('_derived_weights', {})
    cached = cache.get((compute, args))
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        value = compute(module, *args)
    cache[compute, args] = (key, value)
    return value


def tensors_of(module: nn.Module):
    """The parameters and buffers of ``module`` and its children, read from
    the modules' own dicts (:meth:`nn.Module.parameters` costs more than the
    small convolutions whose cache keys this serves)."""
    stack = [module]
    while stack:
        module = stack.pop()
        for tensors in (module._parameters, module._buffers):
            yield from (t for t in tensors.values() if t is not None)
        stack.extend(module._modules.values())
