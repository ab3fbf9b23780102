"""Operations that save a pass over memory: a GELU inside the kernel that
produces its input, an eval-mode BatchNorm applied in place, a depthwise
convolution plus its input as one convolution. Each computes exactly what
the plain layers compute."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ...compat import autocast_enabled
from .bn_folding import bn_affine
from .weight_cache import derived


def runs_on_onednn(x: torch.Tensor) -> bool:
    """Whether oneDNN's fused kernels serve ``x``: a float32/bfloat16 CPU
    tensor outside autocast (whose casts they would skip)."""
    return (x.device.type == 'cpu' and torch.backends.mkldnn.is_available()
            and x.dtype in (torch.float32, torch.bfloat16)
            and not autocast_enabled('cpu'))


def plus_identity(conv: nn.Conv2d) -> torch.Tensor:
    """The kernel of ``conv(x) + x`` for a depthwise convolution: the
    identity on the kernel's centre tap. Exact, since zero padding never
    reaches the centre tap."""
    weight = conv.weight.clone()
    weight[:, :, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] += 1
    return weight


def convolve(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor,
             bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``conv``'s convolution of ``x`` (stride, zero padding, groups) with
    another ``weight`` and ``bias``: a kernel derived from its own."""
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation,
                    conv.groups)


def conv_plus_identity(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x) + x`` for a depthwise convolution, as one convolution."""
    return convolve(conv, x, plus_identity(conv), conv.bias)


def linear_gelu(x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
    """``gelu(linear(x))`` for inference, the GELU in place (faster on a CPU
    than oneDNN's linear with a GELU post-op): ``(..., C_in) -> (...,
    C_out)``."""
    return torch.ops.aten.gelu_(F.linear(x, weight, bias))


def conv_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              stride: int, padding: int, groups: int) -> torch.Tensor:
    """``gelu(conv2d(x))`` for inference on a channels-last ``(B, C, H, W)``
    map; the output is channels-last too. On oneDNN the exact (erf) GELU is
    the convolution's post-op, applied while the output is in cache."""
    if runs_on_onednn(x) and x.dtype == weight.dtype:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias,
                                                       [padding] * 2,
                                                       [stride] * 2, [1, 1],
                                                       groups, 'gelu', [],
                                                       'none')
    return torch.ops.aten.gelu_(
        F.conv2d(x, weight, bias, stride, padding, 1, groups))


def batch_norm_(x: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    """An eval-mode BatchNorm applied in place to a channels-last ``(B, C,
    H, W)`` map that nothing else holds (a kernel's fresh output): one pass
    and no allocation. Any other module (an ``nn.Identity`` left by
    ``CMT.fuse()``) is simply applied."""
    if not isinstance(bn, _BatchNorm):
        return bn(x)
    scale, shift = derived(bn, _affine_as, x.dtype)
    scale, shift = scale.view(-1, 1, 1), shift.view(-1, 1, 1)
    if autocast_enabled(x.device.type):  # torch 2.1 casts addcmul's inputs
        return x.mul_(scale).add_(shift)
    return torch.addcmul(shift, x, scale, out=x)


def _affine_as(bn: _BatchNorm, dtype: torch.dtype):
    return tuple(v.to(dtype) for v in bn_affine(bn))
