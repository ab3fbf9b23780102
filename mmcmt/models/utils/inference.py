"""The eval-mode inference path: fewer passes over memory, the same function.

Three things make CMT's inference cheaper without changing what it computes:

- **GELU inside the producing convolution.** On a CPU, oneDNN runs a
  convolution with the GELU that follows it as one kernel (a post-op, the
  exact erf GELU): the activation is applied while the output is still in
  cache instead of in a second pass over a multi-megabyte map (the IRFFN's
  depthwise convolution and GELU at 8 x 256 x 56 x 56: 7.5 against 9.7 ms).
- **Eval-mode BatchNorms folded into neighbouring layers** (see
  :mod:`.fuse`), without :meth:`CMT.fuse`: the folded weights are derived
  once and kept until a source parameter or statistic changes. Those in
  front of padded convolutions, which cannot fold, are applied in place to
  their producer's fresh output.
- **Hidden maps in pieces.** The IRFFN's hidden maps are four times as
  wide as its input (25 MB per map for CMT-S at 8 x 224 x 224, 62 MB at
  800 x 1216). glibc serves such allocations with fresh mappings, whose
  every page faults on first touch; computed a few images or a band of
  rows at a time (:func:`map_pieces`) they take a few megabytes that the
  allocator reuses.

:func:`inference_path` says when this applies: a module in eval mode, with
no gradient to track and no graph being traced or compiled (ONNX export
records the plain layers; inductor fuses them itself), so training and
gradients never see it.
"""
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ...compat import autocast_enabled, is_compiling
from .fuse import bn_affine


def inference_path(module: nn.Module) -> bool:
    """Whether ``module`` may run its eval-mode inference path now."""
    return not (module.training or torch.is_grad_enabled()
                or torch.jit.is_tracing() or is_compiling())


def onednn(x: torch.Tensor) -> bool:
    """oneDNN's fused kernels serve float32/bfloat16 CPU tensors outside
    autocast (whose casts they would skip)."""
    return (x.device.type == 'cpu' and torch.backends.mkldnn.is_available()
            and x.dtype in (torch.float32, torch.bfloat16)
            and not autocast_enabled('cpu'))


def linear_gelu(x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
    """``gelu(linear(x))``, for inference: ``(..., C_in) -> (..., C_out)``.
    (oneDNN's linear with a GELU post-op was measured slower than MKL's
    GEMM and an in-place GELU: 19 against 14 ms at 3800 x 256 -> 1024.)"""
    return torch.ops.aten.gelu_(F.linear(x, weight, bias))


def conv_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              stride: int, padding: int, groups: int) -> torch.Tensor:
    """``gelu(conv2d(x))``, for inference, on a channels-last ``(B, C, H,
    W)`` map; the output is channels-last too."""
    if onednn(x) and x.dtype == weight.dtype:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias,
                                                       [padding] * 2,
                                                       [stride] * 2, [1, 1],
                                                       groups, 'gelu', [],
                                                       'none')
    return torch.ops.aten.gelu_(
        F.conv2d(x, weight, bias, stride, padding, 1, groups))


#: Bytes of one piece of a large map computed piece by piece on a CPU: well
#: below glibc's mmap threshold (32 MB at most), so that freed pieces are
#: reused instead of fresh pages that fault. Measured on CMT-S's IRFFN in a
#: fresh process, the backbone took 0.91-0.93x its time with whole maps at
#: 8 x 224 x 224 and 0.91-0.96x at 800 x 1216, for pieces of 4 to 24 MB; it
#: gains nothing where freed memory is kept anyway (jemalloc, tcmalloc,
#: ``tools/benchmark.py``'s steady heap: 1.00x), nor loses.
PIECE_BYTES = 8 << 20


def map_pieces(batch: int, height: int, row_bytes: int):
    """Split a ``(batch, height, ...)`` map whose rows take ``row_bytes``
    into pieces of about :data:`PIECE_BYTES`: whole images when one fits,
    otherwise bands of rows of one image. Pieces of a split are of nearly
    equal sizes; a band holds as many rows as fit, or four (each band
    computes two more rows, for a depthwise convolution's borders).

    Yields:
        tuple[slice, slice]: the images and the rows of each piece.
    """
    budget, image_bytes = PIECE_BYTES, height * row_bytes
    if image_bytes <= budget:
        images = _even_split(batch, max(1, budget // image_bytes))
        yield from ((piece, slice(0, height)) for piece in images)
        return
    for image in range(batch):
        for rows in _even_split(height, max(4, budget // row_bytes)):
            yield slice(image, image + 1), rows


def _even_split(length: int, most: int):
    """``range(length)`` as slices of at most ``most``, whose lengths differ
    by one at most."""
    count = -(-length // most)
    ends = [length * i // count for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(ends, ends[1:])]


def batch_norm_(x: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    """An eval-mode BatchNorm applied in place to a channels-last ``(B, C,
    H, W)`` map that nothing else holds (a kernel's fresh output): one pass
    and no allocation, about twice as fast as ``bn(x)``. Any other module
    (an ``nn.Identity`` left by ``fuse()``) is simply applied."""
    if not isinstance(bn, _BatchNorm):
        return bn(x)
    scale, shift = derived(bn, '_affine', tensors_of(bn),
                           lambda: tuple(v.to(x.dtype) for v in bn_affine(bn)))
    scale, shift = scale.view(-1, 1, 1), shift.view(-1, 1, 1)
    if autocast_enabled(x.device.type):  # torch 2.1 casts addcmul's inputs
        return x.mul_(scale).add_(shift)
    return torch.addcmul(shift, x, scale, out=x)


def derived(owner: nn.Module, name: str, sources: Iterable[torch.Tensor],
            compute: Callable):
    """``compute()`` under no_grad, kept on ``owner`` until one of the
    ``sources`` is replaced, moved or changed in place (its version
    counter), so that loading weights or a training step is never missed."""
    sources = list(sources)
    key = tuple((t.data_ptr(), t._version, t.dtype) for t in sources)
    cached = owner.__dict__.get(name)
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        value = compute()
    owner.__dict__[name] = (key, value)
    return value


def tensors_of(*modules: nn.Module):
    """The parameters and buffers of ``modules`` and their children (read
    from the modules' own dicts: :meth:`nn.Module.parameters` costs more
    than the small convolutions whose cache keys this serves)."""
    stack = list(modules)
    while stack:
        module = stack.pop()
        for tensors in (module._parameters, module._buffers):
            yield from (t for t in tensors.values() if t is not None)
        stack.extend(module._modules.values())
