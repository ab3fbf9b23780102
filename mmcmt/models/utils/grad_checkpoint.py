"""Gradient checkpointing (``with_cp``) of a module whose activations
autograd would keep, its recomputation in the backward pass as the first
forward ran."""
import contextlib

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from torch.nn.modules.batchnorm import _BatchNorm

from .forms import lean_training, lean_training_now


def maybe_checkpoint(enabled: bool, module: nn.Module, *inputs):
    """``module(*inputs)``, with gradient checkpointing when ``enabled`` and
    autograd would keep the module's activations: for its inputs' gradients
    or for its own parameters' (behind a frozen layer, the input of a
    trainable one needs no gradient)."""
    if not (enabled and torch.is_grad_enabled() and
            (any(t.requires_grad
                 for t in inputs) or any(p.requires_grad
                                         for p in module.parameters()))):
        return module(*inputs)
    lean = lean_training_now()
    return cp.checkpoint(
        module,
        *inputs,
        use_reentrant=False,
        context_fn=lambda:
        (contextlib.nullcontext(), _recomputing(module, lean)))


@contextlib.contextmanager
def _recomputing(module: nn.Module, lean: bool):
    """The recomputation in the backward pass: in the forms of the first
    forward (the lean training forms or not, as its caller decided), with
    the BatchNorms' statistics kept."""
    with lean_training(lean), keep_bn_statistics(module):
        yield


@contextlib.contextmanager
def keep_bn_statistics(module: nn.Module):
    """While a checkpointed forward is recomputed in the backward pass: its
    training-mode BatchNorms would update their running statistics a second
    time, so they are put back as the first forward left them."""
    saved = [(bn, [b.clone() for b in bn.buffers()])
             for bn in module.modules() if isinstance(bn, _BatchNorm)]
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, buffers in saved:
                for buffer, value in zip(bn.buffers(), buffers):
                    buffer.copy_(value)
