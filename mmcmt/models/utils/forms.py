"""Choosing the form in which a module computes its function.

Each module's ``forward`` (and :meth:`CMTStage.bias_for`,
:meth:`CMT.position_biases`) is written as the paper's computation and
reads alone. Some have other forms of the same function, each for one
situation, listed by :func:`with_forms` on the method they stand in for:

- ``eval``: faster inference (:mod:`..backbones.cmt_inference`), in eval
  mode without gradients;
- ``training``: memory-lean (:mod:`..backbones.cmt_lean_training`),
  keeping fewer tensors for the backward pass, while a gradient is tracked
  and the lean training forms are on (:func:`lean_training`);
- ``export``: the graph that ONNX Runtime runs fastest
  (:mod:`..backbones.cmt_export`), while exporting to ONNX.

A graph being traced (other than for ONNX) or compiled records the plain
method (inductor fuses the plain layers itself). :func:`form_now` is the
one place where the situation is read.
"""
import contextlib
import functools
from typing import Callable, Optional

import torch
import torch.nn as nn

from ...compat import is_compiling

EVAL, TRAINING, EXPORT = 'eval', 'training', 'export'

#: Whether modules take their training forms now: the innermost
#: :func:`lean_training`'s setting (on outside any).
_lean = [True]


def form_now(module: nn.Module) -> Optional[str]:
    """The form ``module`` computes in now: :data:`EXPORT` while exporting to
    ONNX, :data:`TRAINING` while a gradient is tracked and the lean training
    forms are on, :data:`EVAL` in eval mode without gradients; None (the
    plain method) otherwise and in traced or compiled graphs."""
    if torch.onnx.is_in_onnx_export():
        return EXPORT
    if torch.jit.is_tracing() or is_compiling():
        return None
    if torch.is_grad_enabled():
        return TRAINING if _lean[-1] else None
    return None if module.training else EVAL


@contextlib.contextmanager
def lean_training(enabled: bool):
    """Within, modules that track a gradient take their training forms
    (``enabled``) or their plain layers."""
    _lean.append(bool(enabled))
    try:
        yield
    finally:
        _lean.pop()


def lean_training_now() -> bool:
    """The setting of the innermost :func:`lean_training`."""
    return _lean[-1]


@contextlib.contextmanager
def plain_layers_in_training():
    """Within, modules train through their plain layers, not their lean
    training forms (what the lean forms are measured against)."""
    with lean_training(False):
        yield


def with_forms(eval: Optional[Callable] = None,
               training: Optional[Callable] = None,
               export: Optional[Callable] = None) -> Callable:
    """Decorate a module's method with the other forms of its function: each
    ``form(module, *args)`` computes what the method computes, and runs
    instead of it when :func:`form_now` names it. A form returns None where
    it does not apply (say, to a norm it does not know): the method runs."""
    forms = {EVAL: eval, TRAINING: training, EXPORT: export}

    def decorate(method):

        @functools.wraps(method)
        def dispatch(self, *args):
            form = forms.get(form_now(self))
            if form is not None:
                out = form(self, *args)
                if out is not None:
                    return out
            return method(self, *args)

        return dispatch

    return decorate
