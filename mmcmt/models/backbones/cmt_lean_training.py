"""CMT's training forms: the functions of modules in :mod:`.cmt` with
gradients, keeping fewer tensors for the backward pass (see
:func:`~mmcmt.models.utils.forms.with_forms`).

Autograd keeps, for the IRFFN, every intermediate map that a later gradient
needs: six maps four times as wide as the block's input (the 1x1
expansion's output, its GELU, its BatchNorm, the depthwise convolution's
output, its GELU and BatchNorm). :class:`_LeanIRFFN` keeps one of them, the
expansion's output, and recomputes the GELUs and the depthwise convolution
in the backward pass: half the training memory of CMT-S at detection
sizes, in about the plain layers' time
(docs/advanced_guides/speed_and_memory.md). Each BatchNorm is folded into
the layer after it, in both passes: BatchNorm's own kernel takes its batch
statistics (and updates the running ones), the scale and shift they make
multiply and shift the next layer's kernel, and its output is never
computed. Gradients and running statistics are those of the plain layers,
to rounding (as accurate as theirs).

Under autocast (``--amp``: float16 or bfloat16, on the CPU and on CUDA) it
computes in the dtypes that autocast gives the plain layers (the linear
layers and the convolution in the low precision, the BatchNorms' statistics
in float32, their outputs in the low precision), keeps the low-precision
copy of its input that the plain first linear layer keeps, and recomputes
under the same autocast in the backward pass. There the BatchNorms are not
folded but computed as the plain layers compute them (the same outputs to
the bit): a folded kernel's products would round in the low precision
before the mean is taken out.

Its BatchNorms may be SyncBatchNorms (``sync_bn`` in the configs): their
batch statistics and the backward pass's two sums are then reduced over the
norm's process group (:mod:`~mmcmt.models.utils.batch_norm`), as torch's
SyncBatchNorm reduces them.

The rest of a block keeps, in the plain layers, maps of the block's width
that are cheap to compute again from another kept one:

- ``norm2``'s output, which the IRFFN's first linear layer keeps:
  :func:`irffn` given the LayerNorm keeps its input instead (kept by the
  LayerNorm anyway) and computes the output again;
- the LPU's output (kept by ``norm1``) and ``norm1``'s output (kept by the
  query projection and the key/value reduction's convolution):
  :func:`attention_input` keeps the LPU's input alone (kept by the LPU
  anyway) and computes both again (a depthwise convolution and a
  LayerNorm). :func:`cmt_block` is the block with both;
- in the stem, at half the input's resolution, each GELU's output (kept by
  the BatchNorm after it): :func:`stem_layer` keeps the convolution's
  output alone.

Each of these forms computes in the dtypes of the plain layers under the
same autocast, and takes SyncBatchNorms as the IRFFN does. With the lean
IRFFN, a block keeps 9 maps of its width (the LPU's input, the attention's
queries and output, the attention residual's sum, the expansion's output,
four wide, and ``norm3``'s input) where the plain layers keep 32 and the
lean IRFFN alone 12; the stem keeps 5 maps of its width where it kept 8.
CMT-S, one image at 800x1216: 1.48 GiB kept for the backward pass, where
the plain layers keep 4.93 GiB (1.95 GiB with the lean IRFFN and the
recomputed bias alone).

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
from ..utils.batch_norm import (affine, apply_batch_norm, batch_norm,
                                batch_norm_backward, batch_statistics)
from ..utils.fused_ops import convolve, plus_identity
from ..utils.layout import nchw_to_nhwc, nhwc_to_nchw


def irffn(ffn, x: torch.Tensor, norm=None) -> torch.Tensor:
    """:class:`IRFFN` in training: ``(B, H, W, C) -> (B, H, W, C)``, also
    under autocast; with ``norm`` (the block's LayerNorm before it),
    ``ffn(norm(x))``, keeping ``x`` (which the LayerNorm keeps anyway) in
    place of the LayerNorm's output.

    None where the lean form does not apply: with norms other than torch's
    BatchNorm2d and SyncBatchNorm (and LayerNorm)."""
    norms = (ffn.norm1, ffn.norm2)
    if any(type(bn) not in (nn.BatchNorm2d, nn.SyncBatchNorm) for bn in norms):
        return None
    if norm is not None and type(norm) is not nn.LayerNorm:
        return None
    device = x.device.type
    amp = (device, autocast_dtype(device)) if autocast_enabled(device) else \
        None
    y = _LeanIRFFN.apply(x, (ffn, norm, amp), ffn.fc1.weight, ffn.fc1.bias,
                         ffn.norm1.weight, ffn.norm1.bias, ffn.dwconv.weight,
                         ffn.dwconv.bias, ffn.norm2.weight, ffn.norm2.bias,
                         ffn.fc2.weight, ffn.fc2.bias,
                         *((norm.weight, norm.bias) if norm else ()))
    return ffn.norm3_tokens(y)


def _layer_norm(norm, x):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias,
                        norm.eps)


class _LeanIRFFN(torch.autograd.Function):
    """(A LayerNorm,) fc1, GELU, norm1, depthwise convolution plus identity,
    GELU, norm2, fc2: ``(B, H, W, C) -> (B, H, W, C)`` (before norm3). Keeps
    ``x`` (without the LayerNorm, its low-precision copy under autocast),
    the expansion's output and the BatchNorms' statistics
    (:class:`~mmcmt.models.utils.batch_norm.Statistics`); the LayerNorm's
    output is computed again in the backward pass. ``form``: the IRFFN, the
    LayerNorm or None, and the autocast in force, ``(device type, dtype)``
    or None."""

    @staticmethod
    def forward(ctx, x, form, *params):
        ffn, norm, amp = form
        fc1, dwconv, fc2 = ffn.fc1, ffn.dwconv, ffn.fc2
        with torch.no_grad():
            u = x if norm is None else _layer_norm(norm, x)
            if amp is not None:  # what autocast gives the plain fc1
                u = u.to(amp[1])
            if norm is None:
                x = u
            a = F.linear(u, fc1.weight, fc1.bias)
            del u
            # GELU over a's own (NHWC) layout, as the plain fc1's output:
            # on a channels-last view ATen's kernel rounds differently
            g1 = nhwc_to_nchw(F.gelu(a))
            kernel = plus_identity(dwconv)
            if amp is None:  # each BatchNorm folded into the layer after it
                stats1 = batch_statistics(ffn.norm1, g1)
                d = _affine_depthwise_conv(dwconv, kernel, g1,
                                           *affine(ffn.norm1, stats1))
                del g1
                g = torch.ops.aten.gelu_(d)
                stats2 = batch_statistics(ffn.norm2, g)
                scale, shift = affine(ffn.norm2, stats2)
                y = F.linear(
                    nchw_to_nhwc(g), fc2.weight * scale,
                    torch.addmv(fc2.bias, fc2.weight, shift)
                    if fc2.bias is not None else fc2.weight @ shift)
            else:  # as the plain layers round (the BatchNorms in place)
                h, stats1 = batch_norm(ffn.norm1, g1, inplace=True)
                d = convolve(dwconv, h, kernel, dwconv.bias)
                del h, g1
                h, stats2 = batch_norm(
                    ffn.norm2, torch.ops.aten.gelu_(d), inplace=True)
                y = F.linear(nchw_to_nhwc(h), fc2.weight, fc2.bias)
        ctx.ffn, ctx.norm, ctx.amp = ffn, norm, amp
        ctx.stats = stats1, stats2
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
        ffn, norm, (stats1, stats2) = ctx.ffn, ctx.norm, ctx.stats
        fc1, norm1, dwconv, norm2, fc2 = (ffn.fc1, ffn.norm1, ffn.dwconv,
                                          ffn.norm2, ffn.fc2)
        needs = ctx.needs_input_grad
        # x, the form, the ten parameters, the LayerNorm's weight and bias
        grads = [None] * len(needs)
        C, hidden = x.shape[-1], a.shape[-1]
        u = x
        if norm is not None:  # its output again, differentiable
            with torch.enable_grad():
                leaves = [
                    t.detach().requires_grad_(need)
                    for t, need in zip((x, norm.weight,
                                        norm.bias), (needs[0], needs[12],
                                                     needs[13]))
                    if t is not None
                ]
                x_norm = F.layer_norm(leaves[0], norm.normalized_shape,
                                      *leaves[1:], norm.eps)
            u = x_norm.detach()
            if ctx.amp is not None:  # as the plain fc1's autocast casts it
                u = u.to(ctx.amp[1])
        kernel = plus_identity(dwconv)
        dw_weight = kernel.to(a.dtype)  # as autocast casts
        fold = ctx.amp is None  # the BatchNorms folded, as in the forward

        # The maps again, each gradient written into the memory of a map no
        # longer needed where it can be: the depthwise convolution's output
        # (of h1 = norm1(g1) = g1 * scale1 + shift1), g1 kept for norm1's
        # backward pass
        g1 = nhwc_to_nchw(F.gelu(a))
        if fold:
            scale1, shift1 = affine(norm1, stats1)
            d = _affine_depthwise_conv(dwconv, kernel, g1, scale1, shift1)
        else:
            h1 = apply_batch_norm(norm1, g1, stats1)
            d = convolve(dwconv, h1, dw_weight, dwconv.bias)

        # fc2, of h2 = norm2(g) = g * scale + shift: folded, its weight's
        # gradient dy^T h2 = (dy^T g) * scale + sum(dy) shift^T
        g = F.gelu(d)
        dy = grad_y.reshape(-1, C)
        dy_sum = dy.sum(0) if needs[10] or needs[11] else None
        grads[11] = dy_sum if needs[11] else None
        h = g if fold else apply_batch_norm(norm2, g, stats2)
        if needs[10]:
            grads[10] = dy.t().mm(nchw_to_nhwc(h).reshape(-1, hidden))
            if fold:
                scale, shift = affine(norm2, stats2)
                grads[10] = grads[10].mul_(scale).add_(dy_sum[:, None] * shift)
        # fc2's input gradient, as autocast computes it (into h2's memory)
        dh = torch.mm(
            dy.to(g.dtype),
            fc2.weight.to(g.dtype),
            out=None if fold else nchw_to_nhwc(h).view(-1, hidden))
        dh = nhwc_to_nchw(dh.view(nchw_to_nhwc(g).shape))
        del h
        dg, grads[8], grads[9] = batch_norm_backward(
            norm2, dh, g, stats2, (True, needs[8], needs[9]))
        del dh, g
        dd = torch.ops.aten.gelu_backward.grad_input(dg, d, grad_input=dg)
        del dg, d
        if fold:
            dh, grads[6], grads[7] = _affine_depthwise_conv_backward(
                dwconv, dw_weight, dd, g1, scale1, shift1,
                (needs[6], needs[7]))
        else:
            dh, grads[6], grads[7] = torch.ops.aten.convolution_backward(
                dd, h1, dw_weight, [hidden], dwconv.stride, dwconv.padding,
                dwconv.dilation, False, [0, 0], dwconv.groups,
                [True, needs[6], needs[7]])
            del h1
        del dd
        dg, grads[4], grads[5] = batch_norm_backward(
            norm1, dh, g1, stats1, (True, needs[4], needs[5]))
        del dh, g1
        da = nchw_to_nhwc(
            torch.ops.aten.gelu_backward.grad_input(
                dg, nhwc_to_nchw(a), grad_input=dg)).reshape(-1, hidden)
        del dg
        if needs[2]:
            grads[2] = da.t().mm(u.reshape(-1, C))
        if needs[3]:
            grads[3] = da.sum(0)
        del u
        if norm is None:
            if needs[0]:
                grads[0] = da.mm(fc1.weight).view(x.shape)
            return tuple(grads)
        du = da.mm(fc1.weight).view(x.shape).to(x_norm.dtype)
        del da
        wanted = [t for t in leaves if t.requires_grad]
        if wanted:  # the LayerNorm's gradients
            found = iter(torch.autograd.grad(x_norm, wanted, du))
            for index, leaf in zip((0, 12, 13), leaves):
                if leaf.requires_grad:
                    grads[index] = next(found)
        return tuple(grads)


def _padded_taps(conv, x):
    """``(rows, cols)``, each ``{index: taps}``: the rows (columns) of
    ``conv``'s output (stride 1) over the map ``x`` ``(B, C, H, W)`` whose
    kernel rows (columns) ``taps`` fall in the zero padding."""
    found = []
    for k, pad, size in zip(conv.kernel_size, conv.padding, x.shape[2:]):
        border = set(range(min(pad, size))) | set(
            range(max(size - pad, 0), size))
        taps = {
            i: [t for t in range(k) if not 0 <= i + t - pad < size]
            for i in border
        }
        found.append({i: t for i, t in taps.items() if t})
    return found


def _affine_depthwise_conv(conv, kernel, x, scale, shift):
    """``conv`` (depthwise, stride 1, zero padding, weight ``kernel``) of
    ``x * scale + shift`` (per channel, ``x`` of shape ``(B, C, H, W)``),
    without that map: ``x`` convolved by ``kernel * scale`` with the bias
    ``bias + shift * sum(kernel)``, less ``shift`` times the taps that fall
    in the padding at the border (where the padding pads the affine map, not
    ``x``)."""
    weight = kernel * scale.view(-1, 1, 1, 1)
    bias = shift * kernel.sum((1, 2, 3))
    if conv.bias is not None:
        bias = bias + conv.bias
    y = convolve(conv, x, weight, bias)
    kernel = kernel[:, 0] * shift.view(-1, 1, 1)  # (C, kh, kw)
    rows, cols = _padded_taps(conv, x)
    for i, taps in rows.items():
        y[:, :, i, :] -= kernel[:, taps].sum((1, 2)).to(y.dtype)[:, None]
    for j, taps in cols.items():
        y[:, :, :, j] -= kernel[:, :, taps].sum((1, 2)).to(y.dtype)[:, None]
    for i, row_taps in rows.items():
        for j, col_taps in cols.items():
            y[:, :, i, j] += kernel[:, row_taps][:, :, col_taps].sum(
                (1, 2)).to(y.dtype)
    return y


def _affine_depthwise_conv_backward(conv, weight, grad, x, scale, shift,
                                    output_mask):
    """The gradients of :func:`_affine_depthwise_conv`'s output ``(input
    of the affine map, conv's weight, conv's bias)``, the last two as
    ``output_mask`` asks, from ``x``: the weight's gradient, ``sum(grad *
    (x * scale + shift))`` over each tap's window, is ``scale`` times
    ``x``'s plus ``shift`` times the sum of ``grad`` over the window (all
    of it less the border where the tap falls in the padding)."""
    C = x.shape[1]
    dx, dw, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, conv.stride, conv.padding, conv.dilation, False,
        [0, 0], conv.groups, [True, output_mask[0], False])
    if not any(output_mask):
        return dx, None, None
    total = grad.sum((0, 2, 3), dtype=shift.dtype)
    if not output_mask[0]:
        return dx, None, total if output_mask[1] else None
    # the sum of grad over each tap's window, (C, kh, kw)
    window = total.view(-1, 1, 1).repeat(1, *weight.shape[2:])
    rows, cols = _padded_taps(conv, x)
    for i, taps in rows.items():
        window[:, taps] -= grad[:, :, i, :].sum(
            (0, 2), dtype=shift.dtype).view(C, 1, 1)
    for j, taps in cols.items():
        window[:, :, taps] -= grad[:, :, :, j].sum(
            (0, 2), dtype=shift.dtype).view(C, 1, 1)
    for i, row_taps in rows.items():
        for j, col_taps in cols.items():
            corner = grad[:, :, i, j].sum(0, dtype=shift.dtype)
            for t in row_taps:
                window[:, t, col_taps] += corner.view(C, 1)
    dw = dw * scale.view(-1, 1, 1, 1) + (window * shift.view(-1, 1, 1))[:,
                                                                        None]
    return dx, dw, total if output_mask[1] else None


def relative_position_bias(stage, grid):
    """:meth:`CMTStage.bias_for` in training, where it is resized: the same
    bias and gradient, not kept for the backward pass (computed again
    there, once for all the stage's blocks). None where it does not apply:
    the stored bias used as it is, a stored bias that needs no gradient,
    and with ``with_cp`` (the checkpoints keep their inputs, the bias
    among them)."""
    param = stage.relative_position_bias
    if tuple(grid) == stage.bias_resizer.pretrain_grid or \
            not param.requires_grad or stage.with_cp:
        return None
    device = param.device.type
    amp = (device, autocast_dtype(device)) if autocast_enabled(device) else \
        None
    version = param._version

    resizer = stage.bias_resizer

    def compute():
        """The forward pass's bias again, under its autocast."""
        if param._version != version:
            raise RuntimeError(
                'the relative position bias needed for gradient computation '
                'has been modified by an inplace operation (between the '
                'forward and the backward pass)')
        with (torch.autocast(*amp) if amp else contextlib.nullcontext()):
            return resizer.resize(param.detach(), grid)

    recomputation = BiasRecomputation(compute)
    return recomputation.attach(
        _ResizedBias.apply(param, (resizer, tuple(grid), recomputation)))


class _ResizedBias(torch.autograd.Function):
    """The stored bias resized to a grid (:meth:`BiasResizer.resize`),
    keeping no map: the backward pass takes the resize's transposed
    products."""

    @staticmethod
    def forward(ctx, param, form):
        resizer, grid, recomputation = form
        ctx.resizer, ctx.grid, ctx.recomputation = resizer, grid, recomputation
        with torch.no_grad():
            bias = resizer.resize(param, grid)
        ctx.save_for_backward(param)
        return bias

    @staticmethod
    def backward(ctx, grad):
        ctx.recomputation.release()  # every block's backward has run
        param, = ctx.saved_tensors
        return ctx.resizer.resize_backward(grad, param, ctx.grid), None


def cmt_block(block, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """:class:`CMTBlock` in training: the LPU, ``norm1`` and the attention's
    projections by :func:`attention_input`, ``norm2`` and the IRFFN by
    :func:`irffn`, each where it applies (else through the plain
    layers)."""
    attn = block.attn
    parts = attention_input(block, x)
    if parts is None:
        x = block.lpu(x)
        y = attn(block.norm1(x), bias)
    else:
        x, q, source = parts
        x = nchw_to_nhwc(x)
        y = attn.attend(q, attn.keys_values_from(source), bias)
    x = block.add_branch(y, x)
    y = irffn(block.ffn, x, block.norm2)
    if y is None:
        y = block.ffn(block.norm2(x))
    return block.add_branch(y, x)


def attention_input(block, x: torch.Tensor):
    """The LPU, ``norm1`` and the attention's projections of the normalised
    map in training, also under autocast: ``(x1, q, source)``, ``x1 =
    lpu(x)`` (a channels-last ``(B, C, H, W)`` map), ``q =
    attn.q(norm1(x1))`` and ``source`` the output of the attention's first
    key/value layer (:attr:`LightweightAttention.key_value_input_layer`) on
    ``norm1(x1)``. Keeps ``x`` alone (which the plain LPU keeps too), where
    the plain layers also keep ``x1`` and ``norm1(x1)``: both are computed
    again in the backward pass (a depthwise convolution and a LayerNorm).

    None where it does not apply: a norm other than torch's LayerNorm."""
    norm, attn = block.norm1, block.attn
    if type(norm) is not nn.LayerNorm:
        return None
    device = x.device.type
    amp = (device, autocast_dtype(device)) if autocast_enabled(device) else \
        None
    source = attn.key_value_input_layer
    return _LeanAttentionInput.apply(x, (block, amp), block.lpu.weight,
                                     block.lpu.bias, norm.weight, norm.bias,
                                     attn.q.weight, attn.q.bias, source.weight,
                                     source.bias)


class _LeanAttentionInput(torch.autograd.Function):
    """:func:`attention_input`: keeps ``x`` (its low-precision copy under
    autocast, as the plain LPU's convolution keeps it). ``form``: the block
    and the autocast in force, ``(device type, dtype)`` or None."""

    @staticmethod
    def forward(ctx, x, form, *params):
        block, amp = form
        lpu, norm, attn = block.lpu, block.norm1, block.attn
        with torch.no_grad():
            if amp is not None:  # what autocast gives the plain LPU
                x = x.to(amp[1])
            x1 = convolve(lpu, nhwc_to_nchw(x), plus_identity(lpu), lpu.bias)
            u = _layer_norm(norm, nchw_to_nhwc(x1))
            q = F.linear(u, attn.q.weight, attn.q.bias)
            layer = attn.key_value_input_layer
            if isinstance(layer, nn.Conv2d):
                source = convolve(layer, nhwc_to_nchw(u), layer.weight,
                                  layer.bias)
            else:
                source = F.linear(u, layer.weight, layer.bias)
        ctx.block, ctx.amp = block, amp
        ctx.save_for_backward(x)
        return x1, q, source

    @staticmethod
    def backward(ctx, grad_x1, grad_q, grad_source):
        # the forward's computation again, under the forward's autocast
        with (torch.autocast(
                *ctx.amp) if ctx.amp else contextlib.nullcontext()):
            return _LeanAttentionInput._backward(ctx, grad_x1, grad_q,
                                                 grad_source)

    @staticmethod
    def _backward(ctx, grad_x1, grad_q, grad_source):
        x, = ctx.saved_tensors
        block, amp = ctx.block, ctx.amp
        lpu, norm, attn = block.lpu, block.norm1, block.attn
        needs = ctx.needs_input_grad
        grads = [None] * len(needs)  # x, form, then the eight parameters
        C = x.shape[-1]
        lpu_weight = plus_identity(lpu).to(x.dtype)  # as autocast casts

        # norm1's input and output again, the output differentiable
        x1 = convolve(lpu, nhwc_to_nchw(x), lpu_weight, lpu.bias)
        with torch.enable_grad():
            leaves = [
                t.detach().requires_grad_(need)
                for t, need in zip((nchw_to_nhwc(x1), norm.weight,
                                    norm.bias), (True, needs[4], needs[5]))
                if t is not None
            ]
            x_norm = F.layer_norm(leaves[0], norm.normalized_shape,
                                  *leaves[1:], norm.eps)
        u = x_norm.detach()
        if amp is not None:  # as autocast casts it for the projections
            u = u.to(amp[1])
        flat = u.reshape(-1, C)

        # the projections of u
        grad_q = grad_q.reshape(-1, C)
        if needs[6]:
            grads[6] = grad_q.t().mm(flat)
        if needs[7]:
            grads[7] = grad_q.sum(0)
        grad_u = grad_q.mm(attn.q.weight).view(u.shape).to(x_norm.dtype)
        del grad_q
        layer = attn.key_value_input_layer
        if isinstance(layer, nn.Conv2d):
            grad, grads[8], grads[9] = torch.ops.aten.convolution_backward(
                grad_source, nhwc_to_nchw(u), layer.weight.to(u.dtype), [C],
                layer.stride, layer.padding, layer.dilation, False, [0, 0],
                layer.groups, [True, needs[8], needs[9]])
            grad = nchw_to_nhwc(grad)
        else:
            grad_source = grad_source.reshape(-1, grad_source.shape[-1])
            if needs[8]:
                grads[8] = grad_source.t().mm(flat)
            if needs[9]:
                grads[9] = grad_source.sum(0)
            grad = grad_source.mm(layer.weight).view(u.shape)
        grad_u = grad_u.add_(grad)
        del grad, flat, u

        # norm1, then the LPU (its input's gradient, the residual's added)
        wanted = [t for t in leaves if t.requires_grad]
        found = iter(torch.autograd.grad(x_norm, wanted, grad_u))
        grad_x1 = nhwc_to_nchw(next(found)).add_(grad_x1)
        for index, leaf in zip((4, 5), leaves[1:]):
            if leaf.requires_grad:
                grads[index] = next(found)
        del x_norm, leaves, grad_u
        grads[0], grads[2], grads[3] = torch.ops.aten.convolution_backward(
            grad_x1, nhwc_to_nchw(x), lpu_weight, [C], lpu.stride, lpu.padding,
            lpu.dilation, False, [0, 0], lpu.groups,
            [needs[0], needs[2], needs[3]])
        if grads[0] is not None:
            grads[0] = nchw_to_nhwc(grads[0])
        return tuple(grads)


def stem_layer(layer, x: torch.Tensor) -> torch.Tensor:
    """:class:`StemLayer` in training: ``norm(gelu(conv(x)))``, also under
    autocast and with a SyncBatchNorm, keeping the convolution's output
    alone where the plain layers keep the GELU's too (the GELU is computed
    again in the backward pass). None with a norm other than torch's
    BatchNorm2d and SyncBatchNorm."""
    bn = layer.norm
    if type(bn) not in (nn.BatchNorm2d, nn.SyncBatchNorm):
        return None
    return _LeanGeluBatchNorm.apply(layer.conv(x), bn, bn.weight, bn.bias)


class _LeanGeluBatchNorm(torch.autograd.Function):
    """``bn(gelu(x))`` for a ``(B, C, H, W)`` map, keeping ``x`` and the
    BatchNorm's statistics."""

    @staticmethod
    def forward(ctx, x, bn, weight, bias):
        with torch.no_grad():
            out, ctx.stats = batch_norm(bn, F.gelu(x))
        ctx.bn = bn
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad, grad_weight, grad_bias = batch_norm_backward(
            ctx.bn, grad_out, F.gelu(x), ctx.stats,
            (needs[0], needs[2], needs[3]))
        if grad is not None:
            grad = torch.ops.aten.gelu_backward(grad, x)
        return grad, None, grad_weight, grad_bias
