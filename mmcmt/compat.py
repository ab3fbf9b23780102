"""What the installed torch can do, decided once, by capability.

mmcmt supports torch 2.1 (the newest torch with official mmcv 2.1.0 wheels,
so what most mmdet 3.3 users have) up to the newest release. Every torch
feature newer than 2.1 is looked up here, by whether the function or the
argument exists (never by version strings), with an exact fallback next to
it; the rest of the package calls these names only.
"""
import inspect

import torch
import torch.nn as nn

__all__ = [
    'HAS_SAFE_GLOBALS', 'HAS_CPU_FLASH_ATTENTION_MASK', 'ONNX_EXPORT_KWARGS',
    'autocast_enabled', 'is_compiling', 'register_load_state_dict_pre_hook'
]

#: ``torch.serialization.add_safe_globals`` (torch 2.4+): the restricted
#: unpickler of ``torch.load(weights_only=True)`` can be taught mmengine's
#: objects. Without it :mod:`mmcmt.checkpoint.safe_load` brings its own
#: unpickler.
HAS_SAFE_GLOBALS = hasattr(torch.serialization, 'add_safe_globals')


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
