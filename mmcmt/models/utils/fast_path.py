"""Choosing between a module's forward, written as the paper's computation,
and an exact faster form of it for eval-mode inference.

A module's ``forward`` decorated with :func:`with_fast_path` runs its fast
form when :func:`takes_fast_path` says so: in eval mode, with no gradient
to track and no graph being traced or compiled (ONNX export records the
plain layers; inductor fuses them itself). Training and gradients never see
a fast form.
"""
import functools
from typing import Callable

import torch
import torch.nn as nn

from ...compat import is_compiling


def takes_fast_path(module: nn.Module) -> bool:
    """Whether ``module`` may run its eval-mode fast form now."""
    return not (module.training or torch.is_grad_enabled()
                or torch.jit.is_tracing() or is_compiling())


def with_fast_path(fast_form: Callable) -> Callable:
    """Decorate a module's ``forward`` with ``fast_form(module, *args)``, the
    same function computed faster, run instead of it when
    :func:`takes_fast_path`."""

    def decorate(forward):

        @functools.wraps(forward)
        def dispatch(self, *args):
            if takes_fast_path(self):
                return fast_form(self, *args)
            return forward(self, *args)

        dispatch.fast_form = fast_form
        return dispatch

    return decorate
