"""BatchNorm's training computation as functions, for autograd functions
that keep fewer tensors than the plain layers (:mod:`..backbones.
cmt_lean_training`): the forward pass with the statistics it normalised by,
the output again from those statistics, and the backward pass.

Each follows the module it is given: :class:`~torch.nn.BatchNorm2d`, or
:class:`~torch.nn.SyncBatchNorm`, whose batch statistics span the processes
of its group. Across processes it computes what torch's SyncBatchNorm
computes, with ``torch.distributed`` collectives alone (so with gloo on a
CPU as with NCCL on CUDA; torch's own module runs on accelerators only):

- forward: each process's mean, biased variance and count, gathered and
  combined (Chan's parallel formula); the running variance gets the
  unbiased variance of the whole batch;
- backward: the two sums over each process's batch (``dy`` and ``dy * (x -
  mean)``) all-reduced for the input's gradient; the weight's and bias's
  gradients stay each process's own, which DDP then reduces.

A world of one, eval mode, running statistics in use: it is BatchNorm2d.

:func:`batch_statistics` takes the statistics alone, and :func:`affine`
the scale and shift they make, for a BatchNorm folded into the layer after
it. :func:`sync_batch_norm` is the whole module as one autograd function
(input, mean and inverse standard deviation kept, as torch's SyncBatchNorm
keeps them), which torch's SyncBatchNorm modules compute for CPU tensors
once :func:`mmcmt.engine.sync_batch_norm.install_sync_batch_norm_on_cpu`
is installed.
"""
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def uses_batch_statistics(bn: _BatchNorm) -> bool:
    """Whether ``bn`` normalises by the batch's statistics (else by its
    running ones), as its ``forward`` decides."""
    return bn.training or bn.running_mean is None


def sync_group(bn: _BatchNorm):
    """The process group whose whole batch ``bn``'s statistics span now, as
    :meth:`torch.nn.SyncBatchNorm.forward` decides; None where it normalises
    each process's batch alone (BatchNorm2d, eval mode, no process group,
    a world of one)."""
    if not (isinstance(bn, nn.SyncBatchNorm) and bn.training
            and dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


class Statistics:
    """What a training BatchNorm normalised by: ``mean`` and ``invstd`` per
    channel (empty when it used its running statistics), the process
    ``group`` its batch spans (None: this process's batch) and that batch's
    ``count`` of values per channel."""

    def __init__(self, bn, mean, invstd, group=None, count=0):
        self.use_batch = uses_batch_statistics(bn)
        self.mean, self.invstd, self.group, self.count = (mean, invstd, group,
                                                          count)


def _native_batch_norm(x, *args, out=None):
    """``torch.native_batch_norm(x, weight, bias, running_mean, running_var,
    training, momentum, eps)``, its output written into ``out`` if given
    (which may be ``x``: the kernel reads each value before it writes it)."""
    if out is None:
        return torch.native_batch_norm(x, *args)
    # the saved statistics' dtype, as the kernels allocate them: float32 for
    # a low-precision x on CUDA or with float32 parameters, else x's
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16) and (x.is_cuda or any(
            t is not None and t.dtype != dtype for t in args[:4])):
        dtype = torch.float32
    return torch.ops.aten.native_batch_norm.out(
        x,
        *args,
        out=out,
        save_mean=x.new_empty(0, dtype=dtype),
        save_invstd=x.new_empty(0, dtype=dtype))


def _momentum(bn: _BatchNorm) -> float:
    """The running statistics' update factor of a forward pass of ``bn``
    (which counts the pass, as the module's forward does)."""
    if not (bn.training and bn.track_running_stats):
        return 0.
    bn.num_batches_tracked.add_(1)
    return (1. / float(bn.num_batches_tracked)
            if bn.momentum is None else bn.momentum)


def batch_norm(bn: _BatchNorm,
               x: torch.Tensor,
               inplace: bool = False) -> Tuple[torch.Tensor, Statistics]:
    """``bn(x)`` for ``x`` of shape ``(B, C, H, W)`` as the module computes
    it (running statistics updated in training), and the statistics it
    normalised by; with ``inplace``, written into ``x``."""
    factor = _momentum(bn)
    group = sync_group(bn)
    if group is not None:
        stats = _sync_statistics(bn, x, group, factor)
        return apply_batch_norm(bn, x, stats, x if inplace else None), stats
    keep = not bn.training or bn.track_running_stats
    out, mean, invstd = _native_batch_norm(
        x,
        bn.weight,
        bn.bias,
        bn.running_mean if keep else None,
        bn.running_var if keep else None,
        uses_batch_statistics(bn),
        factor,
        bn.eps,
        out=x if inplace else None)
    return out, Statistics(bn, mean, invstd)


def batch_statistics(bn: _BatchNorm, x: torch.Tensor) -> Statistics:
    """The statistics that :func:`batch_norm` normalises ``x`` by (running
    statistics updated in training, as there), without computing its
    output: for a BatchNorm folded into the layer after it."""
    factor = _momentum(bn)
    group = sync_group(bn)
    if group is not None:
        return _sync_statistics(bn, x, group, factor)
    if not uses_batch_statistics(bn):
        return Statistics(bn, x.new_empty(0), x.new_empty(0))
    # BatchNorm's own statistics kernel, as native_batch_norm runs it
    # (and updating the running statistics as it does), the variance
    # returned where it returns the inverse standard deviation
    mean, var = torch.ops.aten.batch_norm_update_stats(x, bn.running_mean,
                                                       bn.running_var, factor)
    return Statistics(bn, mean, (var + bn.eps).rsqrt())


def _sync_statistics(bn, x, group, factor):
    """:func:`batch_statistics` over the whole batch of ``group``'s
    processes."""
    # statistics in float32 at least, as BatchNorm's kernels keep them
    xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
    mean, var = torch.ops.aten.batch_norm_update_stats(xs, None, None, 0.)
    C = mean.numel()
    local = torch.cat([mean, var, mean.new_tensor([x.numel() // C])])
    parts = [
        local.new_empty(local.shape)
        for _ in range(dist.get_world_size(group))
    ]
    dist.all_gather(parts, local, group=group)
    parts = torch.stack(parts)
    means, variances, counts = parts[:, :C], parts[:, C:2 * C], parts[:, -1:]
    count = counts.sum()
    mean = (counts * means).sum(0) / count
    var = (counts * (variances + (means - mean)**2)).sum(0) / count
    invstd = (var + bn.eps).rsqrt()
    if bn.training and bn.track_running_stats:
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(
            (var * count / (count - 1)).to(bn.running_var.dtype), factor)
    return Statistics(bn, mean, invstd, group, float(count))


def affine(bn: _BatchNorm,
           stats: Statistics) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` per channel with ``bn(x) = x * scale + shift`` in
    the forward pass that normalised by ``stats``."""
    mean, invstd = stats.mean, stats.invstd
    if not stats.use_batch:  # by the running statistics
        mean, invstd = bn.running_mean, (bn.running_var + bn.eps).rsqrt()
    scale = invstd if bn.weight is None else invstd * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def apply_batch_norm(bn: _BatchNorm,
                     x: torch.Tensor,
                     stats: Statistics,
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The forward pass's ``bn(x)`` again, from the statistics it used,
    computed in the statistics' precision (float32 under autocast) and
    returned in ``x``'s, as BatchNorm's kernel does; written into ``out``
    (which may be ``x``) if given."""
    if not stats.use_batch:  # by the running statistics, as the forward
        return _native_batch_norm(
            x,
            bn.weight,
            bn.bias,
            bn.running_mean,
            bn.running_var,
            False,
            0.,
            bn.eps,
            out=out)[0]
    scale, shift = affine(bn, stats)
    # x * scale + shift by BatchNorm's kernel, in eval mode with mean 0 and
    # variance 1 (eps 0: exactly scale and shift): one pass, where casting a
    # low-precision x to float32 and back takes three
    return _native_batch_norm(
        x,
        scale,
        shift,
        torch.zeros_like(scale),
        torch.ones_like(scale),
        False,
        0.,
        0.,
        out=out)[0]


def batch_norm_backward(
    bn: _BatchNorm, grad_out: torch.Tensor, x: torch.Tensor, stats: Statistics,
    output_mask
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor],
           Optional[torch.Tensor]]:
    """The gradients of :func:`batch_norm`'s output with respect to ``x``,
    the weight and the bias (those ``output_mask`` asks for; None for the
    others), from the statistics it normalised by."""
    if stats.group is None:
        return torch.ops.aten.native_batch_norm_backward(
            grad_out, x, bn.weight, bn.running_mean,
            bn.running_var, stats.mean, stats.invstd, stats.use_batch, bn.eps,
            list(output_mask))
    # this process's two sums, by BatchNorm's kernel (no map allocated):
    # the bias's gradient is sum(dy), the weight's sum(dy * (x - mean)) *
    # invstd, with the statistics given
    mean, invstd = stats.mean, stats.invstd
    weight = bn.weight if bn.weight is not None else torch.ones_like(mean)
    _, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
        grad_out, x, weight, None, None, mean, invstd, True, bn.eps,
        [False, True, True])
    grad_weight = sum_dy_xhat.clone() if output_mask[1] else None
    grad_bias = sum_dy.clone() if output_mask[2] else None
    grad_x = None
    if output_mask[0]:  # the whole batch's sums, as torch's SyncBatchNorm
        sums = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(sums, group=stats.group)
        mean_dy, mean_dy_xhat = (sums / stats.count).to(mean.dtype).chunk(2)
        # dx = (dy - mean_dy - (x - mean) * invstd * mean_dy_xhat) * invstd
        #    * weight = dy * k_dy + x * k_x + k, per channel
        k_dy = invstd * weight
        k_x = -k_dy * invstd * mean_dy_xhat
        k = -k_dy * mean_dy - k_x * mean
        grad_x = torch.addcmul(
            k.view(-1, 1, 1), x.to(k.dtype), k_x.view(-1, 1, 1))
        grad_x = grad_x.addcmul_(grad_out.to(k.dtype),
                                 k_dy.view(-1, 1, 1)).to(x.dtype)
    return grad_x, grad_weight, grad_bias


class _SyncBatchNorm(torch.autograd.Function):
    """A SyncBatchNorm module's function, keeping ``x``, its mean and
    inverse standard deviation."""

    @staticmethod
    def forward(ctx, x, bn, weight, bias):
        with torch.no_grad():
            out, stats = batch_norm(bn, x)
        ctx.bn, ctx.stats = bn, stats
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x, grad_weight, grad_bias = batch_norm_backward(
            ctx.bn, grad_out, x, ctx.stats, (needs[0], needs[2], needs[3]))
        return grad_x, None, grad_weight, grad_bias


def sync_batch_norm(bn: nn.SyncBatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn(x)`` as torch's SyncBatchNorm computes it, on any device."""
    if sync_group(bn) is None:
        return nn.BatchNorm2d.forward(bn, x)
    return _SyncBatchNorm.apply(x, bn, bn.weight, bn.bias)
