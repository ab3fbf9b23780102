"""Choosing between a module's forward, written as the paper's computation,
and an exact faster form of it for eval-mode inference.

A module's ``forward`` decorated with :func:`with_fast_path` runs its fast
form when :func:`takes_fast_path` says so: in eval mode, with no gradient
to track and no graph being traced or compiled (ONNX export records the
plain layers; inductor fuses them itself). Training and gradients never see
a fast form. It may also have a memory-lean training form and a form for
ONNX export.
"""
import contextlib
import functools
from typing import Callable, Optional

import torch
import torch.nn as nn

from ...compat import is_compiling


def takes_fast_path(module: nn.Module) -> bool:
    """Whether ``module`` may run its eval-mode fast form now."""
    return not (module.training or torch.is_grad_enabled()
                or torch.jit.is_tracing() or is_compiling())


_training_forms = [True]  # cleared within plain_layers_in_training()


def takes_training_form(module: nn.Module) -> bool:
    """Whether ``module`` may run its memory-lean training form now: a
    gradient is tracked, and no graph is being traced or compiled."""
    return _training_forms[-1] and torch.is_grad_enabled() and not (
        torch.jit.is_tracing() or is_compiling())


@contextlib.contextmanager
def plain_layers_in_training():
    """Within, modules train through their plain layers, not their lean
    training forms (what the lean forms are measured against)."""
    _training_forms.append(False)
    try:
        yield
    finally:
        _training_forms.pop()


def with_fast_path(fast_form: Optional[Callable] = None,
                   training_form: Optional[Callable] = None,
                   export_form: Optional[Callable] = None) -> Callable:
    """Decorate a module's ``forward`` with ``fast_form(module, *args)``, the
    same function computed faster, run instead of it when
    :func:`takes_fast_path`; optionally with ``training_form(module,
    *args)``, the same function and gradients keeping fewer tensors for the
    backward pass, run when :func:`takes_training_form`; and optionally
    with ``export_form(module, *args)``, the same function written as the
    graph that ONNX Runtime runs fastest, traced while exporting to ONNX.
    The training and export forms return None where they do not apply, and
    ``forward`` runs."""

    def decorate(forward):

        @functools.wraps(forward)
        def dispatch(self, *args):
            if export_form is not None and torch.onnx.is_in_onnx_export():
                out = export_form(self, *args)
                if out is not None:
                    return out
            elif fast_form is not None and takes_fast_path(self):
                return fast_form(self, *args)
            elif training_form is not None and takes_training_form(self):
                out = training_form(self, *args)
                if out is not None:
                    return out
            return forward(self, *args)

        return dispatch

    return decorate
