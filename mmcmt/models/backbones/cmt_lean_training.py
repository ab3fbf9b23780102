"""CMT's memory-lean training forms: the functions of modules in :mod:`.cmt`
with gradients, keeping fewer tensors for the backward pass.

Autograd keeps, for the IRFFN, every intermediate map that a later gradient
needs: six maps four times as wide as the block's input (the 1x1
expansion's output, its GELU, its BatchNorm, the depthwise convolution's
output, its GELU and BatchNorm). :class:`_LeanIRFFN` keeps one of them, the
expansion's output, and recomputes the GELUs, the BatchNorms (with the
batch statistics of the forward pass) and the depthwise convolution in the
backward pass: half the training memory of CMT-S at detection sizes, at the
same step time (docs/advanced_guides/speed_and_memory.md). Gradients and
running statistics are those of the plain layers.

Under autocast (``--amp``: float16 or bfloat16, on the CPU and on CUDA) it
computes in the dtypes that autocast gives the plain layers (the linear
layers and the convolution in the low precision, the BatchNorms' statistics
in float32, their outputs in the low precision), keeps the low-precision
copy of its input that the plain first linear layer keeps, and recomputes
under the same autocast in the backward pass.

Its BatchNorms may be SyncBatchNorms (``sync_bn`` in the configs): their
batch statistics and the backward pass's two sums are then reduced over the
norm's process group (:mod:`~mmcmt.models.utils.batch_norm`), as torch's
SyncBatchNorm reduces them.

The relative position bias, resized to a detection-size grid, is a
per-process cost that does not shrink with the batch: ``heads x H*W x
h*w`` values per stage (CMT-S at 800x1216: 231 MB at stride 4, 433 MB for
the four stages, plus 100 MB of the resize's intermediate maps that
autograd keeps). :func:`relative_position_bias` keeps none of them: each
stage's bias is computed again in the backward pass, once for all its
blocks (:class:`~mmcmt.models.utils.attention.BiasRecomputation`), and its
gradient goes back to the stored bias by the resize's transposed products.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...compat import autocast_dtype, autocast_enabled
from ..utils.attention import BiasRecomputation
from ..utils.batch_norm import (apply_batch_norm, batch_norm,
                                batch_norm_backward)
from ..utils.fused_ops import plus_identity
from ..utils.layout import nchw_to_nhwc, nhwc_to_nchw
from ..utils.relative_position import resize_relative_position_bias_backward


def irffn(ffn, x: torch.Tensor) -> torch.Tensor:
    """:class:`IRFFN` in training: ``(B, H, W, C) -> (B, H, W, C)``, also
    under autocast.

    The plain layers where the lean form does not apply: with norms other
    than torch's BatchNorm2d and SyncBatchNorm."""
    norms = (ffn.norm1, ffn.norm2)
    if any(type(bn) not in (nn.BatchNorm2d, nn.SyncBatchNorm) for bn in norms):
        return None
    device = x.device.type
    amp = (device, autocast_dtype(device)) if autocast_enabled(device) else \
        None
    y = _LeanIRFFN.apply(x, (ffn, amp), ffn.fc1.weight, ffn.fc1.bias,
                         ffn.norm1.weight, ffn.norm1.bias, ffn.dwconv.weight,
                         ffn.dwconv.bias, ffn.norm2.weight, ffn.norm2.bias,
                         ffn.fc2.weight, ffn.fc2.bias)
    return nchw_to_nhwc(ffn.norm3(nhwc_to_nchw(y)))


class _LeanIRFFN(torch.autograd.Function):
    """fc1, GELU, norm1, depthwise convolution plus identity, GELU, norm2,
    fc2: ``(B, H, W, C) -> (B, H, W, C)`` (before norm3). Keeps ``x`` (its
    low-precision copy under autocast), the expansion's output and the
    BatchNorms' statistics (:class:`~mmcmt.models.utils.batch_norm.
    Statistics`). ``form``: the module and the autocast in
    force, ``(device type, dtype)`` or None."""

    @staticmethod
    def forward(ctx, x, form, *params):
        ffn, amp = form
        fc1, dwconv, fc2 = ffn.fc1, ffn.dwconv, ffn.fc2
        with torch.no_grad():
            if amp is not None:  # what autocast gives the plain fc1
                x = x.to(amp[1])
            a = F.linear(x, fc1.weight, fc1.bias)
            h, stats1 = batch_norm(ffn.norm1, F.gelu(nhwc_to_nchw(a)))
            d = dwconv._conv_forward(h, plus_identity(dwconv), dwconv.bias)
            del h
            h, stats2 = batch_norm(ffn.norm2, F.gelu(d))
            y = F.linear(nchw_to_nhwc(h), fc2.weight, fc2.bias)
        ctx.ffn, ctx.amp, ctx.stats = ffn, amp, (stats1, stats2)
        ctx.save_for_backward(x, a)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        # the forward's computation again, under the forward's autocast
        with (torch.autocast(
                *ctx.amp) if ctx.amp else contextlib.nullcontext()):
            return _LeanIRFFN._backward(ctx, grad_y)

    @staticmethod
    def _backward(ctx, grad_y):
        x, a = ctx.saved_tensors
        ffn, (stats1, stats2) = ctx.ffn, ctx.stats
        fc1, norm1, dwconv, norm2, fc2 = (ffn.fc1, ffn.norm1, ffn.dwconv,
                                          ffn.norm2, ffn.fc2)
        needs = ctx.needs_input_grad
        grads = [None] * 12  # x, ffn, then the ten parameters
        C, hidden = x.shape[-1], a.shape[-1]
        dw_weight = plus_identity(dwconv).to(a.dtype)  # as autocast casts

        # the depthwise convolution's input and output, recomputed
        g1 = F.gelu(nhwc_to_nchw(a))
        h1 = apply_batch_norm(norm1, g1, stats1)
        d = dwconv._conv_forward(h1, dw_weight, dwconv.bias)

        # fc2, its input recomputed: h2 = norm2(gelu(d))
        g = F.gelu(d)
        h = apply_batch_norm(norm2, g, stats2)
        dy = grad_y.reshape(-1, C)
        if needs[10]:
            grads[10] = dy.t().mm(nchw_to_nhwc(h).reshape(-1, hidden))
        if needs[11]:
            grads[11] = dy.sum(0)
        del h
        dh = nhwc_to_nchw(dy.mm(fc2.weight).view(a.shape))
        dg, grads[8], grads[9] = batch_norm_backward(
            norm2, dh, g, stats2, (True, needs[8], needs[9]))
        del dh, g
        dd = torch.ops.aten.gelu_backward(dg, d)
        del dg, d
        dh, grads[6], grads[7] = torch.ops.aten.convolution_backward(
            dd, h1, dw_weight, [hidden], dwconv.stride, dwconv.padding,
            dwconv.dilation, False, [0, 0], dwconv.groups,
            [True, needs[6], needs[7]])
        del dd, h1
        dg, grads[4], grads[5] = batch_norm_backward(
            norm1, dh, g1, stats1, (True, needs[4], needs[5]))
        del dh, g1
        da = nchw_to_nhwc(torch.ops.aten.gelu_backward(
            dg, nhwc_to_nchw(a))).reshape(-1, hidden)
        del dg
        if needs[2]:
            grads[2] = da.t().mm(x.reshape(-1, C))
        if needs[3]:
            grads[3] = da.sum(0)
        if needs[0]:
            grads[0] = da.mm(fc1.weight).view(x.shape)
        return tuple(grads)


def relative_position_bias(stage, grid):
    """``stage.bias_for(grid)`` in training, where it is resized: the same
    bias and gradient, not kept for the backward pass (computed again
    there, once for all the stage's blocks). None where it does not apply:
    the stored bias used as it is, a stored bias that needs no gradient,
    and with ``with_cp`` (the checkpoints keep their inputs, the bias
    among them)."""
    param = stage.relative_position_bias
    if tuple(grid) == stage.pretrain_grid or not param.requires_grad or \
            stage.with_cp:
        return None
    device = param.device.type
    amp = (device, autocast_dtype(device)) if autocast_enabled(device) else \
        None
    version = param._version

    def compute():
        """The forward pass's bias again, under its autocast."""
        if param._version != version:
            raise RuntimeError(
                'the relative position bias needed for gradient computation '
                'has been modified by an inplace operation (between the '
                'forward and the backward pass)')
        with (torch.autocast(*amp) if amp else contextlib.nullcontext()):
            return stage._resize(param.detach(), tuple(grid))

    recomputation = BiasRecomputation(compute)
    return recomputation.attach(
        _ResizedBias.apply(param, (stage, tuple(grid), recomputation)))


class _ResizedBias(torch.autograd.Function):
    """The stored bias resized to a grid (:meth:`CMTStage._resize`), keeping
    no map: the backward pass takes the resize's transposed products."""

    @staticmethod
    def forward(ctx, param, form):
        stage, grid, recomputation = form
        ctx.stage, ctx.grid, ctx.recomputation = stage, grid, recomputation
        with torch.no_grad():
            bias = stage._resize(param, grid)
        ctx.save_for_backward(param)
        return bias

    @staticmethod
    def backward(ctx, grad):
        ctx.recomputation.release()  # every block's backward has run
        param, = ctx.saved_tensors
        stage = ctx.stage
        return resize_relative_position_bias_backward(
            grad, param, stage.pretrain_grid,
            stage.key_grid(stage.pretrain_grid), ctx.grid,
            stage.key_grid(ctx.grid)), None
