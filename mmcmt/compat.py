"""What the installed torch can do, decided once, by capability.

mmcmt supports torch 2.1 (the newest torch with official mmcv 2.1.0 wheels,
so what most mmdet 3.3 users have) up to the newest release. Every torch
feature newer than 2.1 is looked up here, by whether the function or the
argument exists (never by version strings), with an exact fallback next to
it; the rest of the package calls these names only.
"""
import inspect
import warnings

import torch
import torch.nn as nn

__all__ = [
    'HAS_SAFE_GLOBALS', 'HAS_CPU_FLASH_ATTENTION_MASK', 'ONNX_EXPORT_KWARGS',
    'autocast_dtype', 'autocast_enabled', 'autocast_supported', 'capabilities',
    'is_compiling', 'register_load_state_dict_pre_hook'
]


def _safe_globals_take_names() -> bool:
    """Whether ``add_safe_globals`` exists and takes ``(object, name)``
    pairs (2.6+; 2.4 and 2.5 take objects only, which cannot name numpy's
    core module both ways nor a restricted ``getattr``). Probed on a
    throw-away entry that is removed again."""
    if not hasattr(torch.serialization, 'add_safe_globals'):
        return False
    from torch import _weights_only_unpickler as unpickler
    probe = (_safe_globals_take_names, 'mmcmt.compat.probe')
    try:
        unpickler._add_safe_globals([probe])
        try:
            return unpickler._get_user_allowed_globals().get(
                'mmcmt.compat.probe') is _safe_globals_take_names
        finally:
            unpickler._remove_safe_globals([probe])
    except (AttributeError, TypeError, ValueError):
        return False


#: ``torch.serialization.add_safe_globals`` with ``(object, name)`` pairs
#: (torch 2.6+): the restricted unpickler of ``torch.load(weights_only=True)``
#: can be taught mmengine's objects by the names their pickles give them.
#: Without it :mod:`mmcmt.checkpoint.safe_load` brings its own unpickler.
HAS_SAFE_GLOBALS = _safe_globals_take_names()


def register_load_state_dict_pre_hook(module: nn.Module, hook) -> None:
    """``module.register_load_state_dict_pre_hook(hook)``: ``hook(module,
    state_dict, prefix, local_metadata, strict, missing_keys,
    unexpected_keys, error_msgs)`` runs before ``module`` loads its part of
    a state dict. (Public since torch 2.2; 2.1 has the private form.)"""
    if hasattr(module, 'register_load_state_dict_pre_hook'):
        module.register_load_state_dict_pre_hook(hook)
    else:
        module._register_load_state_dict_pre_hook(hook, with_module=True)


if hasattr(torch.compiler, 'is_compiling'):
    is_compiling = torch.compiler.is_compiling
else:  # torch 2.1: dynamo constant-folds this one to True while tracing
    from torch._dynamo import is_compiling  # noqa: F401


def _autocast_takes_device() -> bool:
    try:
        torch.is_autocast_enabled('cpu')
    except TypeError:
        return False
    return True


if _autocast_takes_device():

    def autocast_enabled(device_type: str) -> bool:
        """Whether autocast is on for ``device_type`` (``'cpu'``,
        ``'cuda'``)."""
        return torch.is_autocast_enabled(device_type)
else:  # torch < 2.4: one function per device

    def autocast_enabled(device_type: str) -> bool:
        """Whether autocast is on for ``device_type`` (``'cpu'``,
        ``'cuda'``)."""
        if device_type == 'cpu':
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


if hasattr(torch, 'get_autocast_dtype'):

    def autocast_dtype(device_type: str) -> torch.dtype:
        """The dtype autocast casts to on ``device_type`` (``'cpu'``,
        ``'cuda'``)."""
        return torch.get_autocast_dtype(device_type)
else:  # torch < 2.4: one function per device

    def autocast_dtype(device_type: str) -> torch.dtype:
        """The dtype autocast casts to on ``device_type`` (``'cpu'``,
        ``'cuda'``)."""
        if device_type == 'cpu':
            return torch.get_autocast_cpu_dtype()
        return torch.get_autocast_gpu_dtype()


def _flash_for_cpu_takes_mask() -> bool:
    op = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu',
                 None)
    if op is None:
        return False
    try:
        arguments = op.default._schema.arguments
    except (AttributeError, RuntimeError):
        return False
    return any(a.name == 'attn_mask' for a in arguments)


#: ``aten._scaled_dot_product_flash_attention_for_cpu`` takes an additive
#: mask (torch 2.3+): the fused CPU kernel, which also returns the
#: log-sum-exp that a blockwise backward needs.
HAS_CPU_FLASH_ATTENTION_MASK = _flash_for_cpu_takes_mask()


def _onnx_export_kwargs() -> dict:
    parameters = inspect.signature(torch.onnx.export).parameters
    # newer torch defaults to the dynamo exporter: keep the TorchScript one,
    # whose graph mmcmt's export is written and tested for
    return dict(dynamo=False) if 'dynamo' in parameters else {}


#: Keyword arguments of ``torch.onnx.export`` that select the TorchScript
#: exporter (the only one torch 2.1 has).
ONNX_EXPORT_KWARGS = _onnx_export_kwargs()


def autocast_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast(device_type, dtype=dtype)`` runs: some
    torch builds and devices refuse a dtype (an error), others warn and
    leave autocast off (torch 2.1 on a CPU for float16)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with torch.autocast(device_type, dtype=dtype):
                return autocast_enabled(device_type)
    except (RuntimeError, ValueError):
        return False


def capabilities() -> list:
    """``[(name, available, what runs)]``: each capability above, whether
    the installed torch has it, and what mmcmt runs accordingly (the
    fallback in force where it does not); ``python -m mmcmt.check`` prints
    them."""
    public_hook = hasattr(nn.Module, 'register_load_state_dict_pre_hook')
    compiler = hasattr(torch.compiler, 'is_compiling')
    return [
        ('HAS_CPU_FLASH_ATTENTION_MASK', HAS_CPU_FLASH_ATTENTION_MASK,
         'CPU attention: the fused flash kernel with the bias as mask'
         if HAS_CPU_FLASH_ATTENTION_MASK else
         'fallback: CPU training attention a block of queries at a time; '
         'CPU inference attention on SDPA\'s math path'),
        ('HAS_SAFE_GLOBALS', HAS_SAFE_GLOBALS,
         'checkpoints: torch.load(weights_only=True) + add_safe_globals'
         if HAS_SAFE_GLOBALS else
         'fallback: mmcmt\'s restricted unpickler for checkpoints'),
        ('ONNX_EXPORT_KWARGS', bool(ONNX_EXPORT_KWARGS),
         'ONNX: the TorchScript exporter chosen (dynamo=False)'
         if ONNX_EXPORT_KWARGS else
         'ONNX: the TorchScript exporter (the only one)'),
        ('register_load_state_dict_pre_hook', public_hook, 'the public method'
         if public_hook else 'fallback: its private form, same call'),
        ('autocast_enabled', _autocast_takes_device(),
         'torch.is_autocast_enabled(device)'
         if _autocast_takes_device() else 'fallback: one function per device'),
        ('is_compiling', compiler, 'torch.compiler.is_compiling'
         if compiler else 'fallback: torch._dynamo.is_compiling'),
    ]
