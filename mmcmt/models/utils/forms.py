"""Choosing the form in which a module computes its function.

Each module's ``forward`` (and :meth:`CMTStage.bias_for`,
:meth:`CMT.position_biases`) is written as the paper's computation and
reads alone. Some have other forms of the same function, each for one
situation, listed by :func:`with_forms` on the method they stand in for:

- ``eval``: faster inference (:mod:`..backbones.cmt_inference`), in eval
  mode without gradients;
- ``training``: memory-lean (:mod:`..backbones.cmt_lean_training`),
  keeping fewer tensors for the backward pass, while a gradient is tracked
  and the lean training forms are on: a CMT decides for each call of its
  ``forward`` by its ``lean_training`` (:func:`lean_forms_pay` for
  ``'auto'``), modules outside a CMT take them;
- ``export``: the graph that ONNX Runtime runs fastest
  (:mod:`..backbones.cmt_export`), while exporting to ONNX.

A graph being traced (other than for ONNX) or compiled records the plain
method (inductor fuses the plain layers itself), except an eval form that
keeps a result rather than computing it otherwise (the resized relative
position bias), which a compiled graph takes too. :func:`form_now` is the
one place where the situation is read.
"""
import contextlib
import functools
from typing import Callable, Optional, Union

import torch
import torch.nn as nn

from ...compat import is_compiling

EVAL, TRAINING, EXPORT = 'eval', 'training', 'export'

#: ``lean_training='auto'`` takes the lean training forms for a call whose
#: plain layers would keep at least this many values for the backward pass
#: per parameter of the model (:func:`lean_forms_pay`). By
#: :func:`~..backbones.cmt_arch.values_kept`: CMT-Ti at 2x3x256x256 (the
#: detection demo) 10, at 2x3x320x320 15; CMT-S at 8x3x224x224 21, at
#: 2x3x512x512 28, at 1x3x800x1216 56, at 2x3x800x1216 107. Measured on a
#: 2-core AVX2 CPU (docs/advanced_guides/speed_and_memory.md), the lean
#: forms took 1.2-1.3x the plain layers' step time at the demo's sizes and
#: 1.04-1.10x at 2x512x512 (0.9 against 2.5 GiB), 1.06x at 1x800x1216 (1.7
#: against 5.0 GiB) and 1.03-1.04x at 2x800x1216 (4.5 against 9.6 GiB):
#: the line is drawn where the plain layers' memory reaches several GiB.
AUTO_LEAN_VALUES_PER_PARAMETER = 40

#: Whether modules take their training forms now: the innermost
#: :func:`lean_training`'s setting (on outside any).
_lean = [True]
#: :func:`override_lean_training`'s setting for every CMT (None: their own).
_override = [None]


def form_now(module: nn.Module, compiled_eval: bool = False) -> Optional[str]:
    """The form ``module`` computes in now: :data:`EXPORT` while exporting to
    ONNX, :data:`TRAINING` while a gradient is tracked and the lean training
    forms are on, :data:`EVAL` in eval mode without gradients; None (the
    plain method) otherwise and in traced or compiled graphs (but for
    :data:`EVAL` with ``compiled_eval``)."""
    if torch.onnx.is_in_onnx_export():
        return EXPORT
    if torch.jit.is_tracing():
        return None
    compiling = is_compiling()
    if torch.is_grad_enabled():
        return TRAINING if _lean[-1] and not compiling else None
    if module.training or compiling and not compiled_eval:
        return None
    return EVAL


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


def lean_forms_pay(values_kept: float, parameters: float) -> bool:
    """``lean_training='auto'``'s rule, for a call whose plain layers would
    keep ``values_kept`` values for the backward pass, by a model of
    ``parameters`` parameters: whether they are at least
    :data:`AUTO_LEAN_VALUES_PER_PARAMETER` per parameter.

    The lean forms keep two to three times fewer values for about the plain
    layers' time on detection-size maps, but add passes and calls whose
    cost weighs on small maps (docs/advanced_guides/speed_and_memory.md).
    Where the batch's activations are small against what the model itself
    takes (its weights, their gradients and the optimizer's state, a few
    values per parameter), memory is not what limits the step, and the
    plain layers run."""
    return values_kept >= AUTO_LEAN_VALUES_PER_PARAMETER * parameters


def check_lean_training(setting) -> Union[str, bool]:
    """``setting`` if it is a ``lean_training`` setting: ``'auto'``, True or
    False; else a one-line error."""
    if not (isinstance(setting, bool) or setting == 'auto'):
        raise ValueError(
            f"lean_training must be 'auto', True or False, got {setting!r}")
    return setting


@contextlib.contextmanager
def override_lean_training(setting: Union[str, bool]):
    """Within, every CMT trains as if built with ``lean_training=setting``
    (True and False: modules outside a CMT too)."""
    _override.append(check_lean_training(setting))
    try:
        with (contextlib.nullcontext()
              if setting == 'auto' else lean_training(setting)):
            yield
    finally:
        _override.pop()


def plain_layers_in_training():
    """Within, modules train through their plain layers, not their lean
    training forms (what the lean forms are measured against):
    :func:`override_lean_training` with False."""
    return override_lean_training(False)


def lean_training_setting(own: Union[str, bool]) -> Union[str, bool]:
    """The ``lean_training`` setting in force for a CMT built with ``own``
    (:func:`override_lean_training`'s, if any)."""
    return own if _override[-1] is None else _override[-1]


def with_forms(eval: Optional[Callable] = None,
               training: Optional[Callable] = None,
               export: Optional[Callable] = None,
               compiled_eval: bool = False) -> Callable:
    """Decorate a module's method with the other forms of its function: each
    ``form(module, *args)`` computes what the method computes, and runs
    instead of it when :func:`form_now` names it (``compiled_eval``: the
    eval form in compiled graphs too). A form returns None where it does not
    apply (say, to a norm it does not know): the method runs."""
    forms = {EVAL: eval, TRAINING: training, EXPORT: export}

    def decorate(method):

        @functools.wraps(method)
        def dispatch(self, *args):
            form = forms.get(form_now(self, compiled_eval))
            if form is not None:
                out = form(self, *args)
                if out is not None:
                    return out
            return method(self, *args)

        return dispatch

    return decorate
