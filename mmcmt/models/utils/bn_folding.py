"""Folding inference-mode BatchNorms into neighbouring linear maps.

An eval-mode BatchNorm is the per-channel affine map ``y = s * x + t`` with
``s = weight / sqrt(running_var + eps)`` and ``t = bias - running_mean * s``.
It folds exactly into

- the layer that *produces* its input (a Linear or a convolution of any
  kind): scale the output channels' weights by ``s``, map the bias through
  the affine;
- the layer that *consumes* its output, when that layer sees no padding (a
  Linear, or an unpadded dense convolution): scale the input channels'
  weights by ``s`` and add ``W @ t`` to the bias. (Zero padding would meet
  ``t`` inside the border but not outside it, so padded convolutions are
  left alone.)

The arithmetic runs in float64 and is cast back, so the folded network
matches the unfused one to float32 rounding.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

Layer = Union[nn.Linear, nn.Conv2d]


def bn_affine(bn: _BatchNorm) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` in float64 with ``bn(x) == s * x + t`` in eval mode."""
    if not bn.track_running_stats or bn.running_var is None:
        raise ValueError('only BatchNorms with running statistics fold')
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def folded_weights(
        layer: Layer,
        before: Optional[nn.Module] = None,
        after: Optional[nn.Module] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias that make ``layer`` compute ``after(layer(before(x)))``
    for eval-mode BatchNorms ``before`` and ``after`` (``None`` or
    ``nn.Identity`` stand for none), in the layer's dtype. ``before`` needs
    a layer that sees no padding: a Linear or an unpadded, ungrouped
    convolution."""
    weight = layer.weight.detach().double()
    bias = (
        layer.bias.detach().double()
        if layer.bias is not None else weight.new_zeros(weight.shape[0]))
    taps = [1] * (weight.dim() - 2)  # kernel dimensions of a convolution
    if isinstance(before, _BatchNorm):
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or any(
                layer.padding) or layer.padding_mode != 'zeros'):
            raise ValueError('a BatchNorm folds into a following convolution '
                             'only when it is dense and unpadded')
        scale, shift = bn_affine(before)
        # W @ t: sum over input channels (and kernel taps) of W * t
        bias = bias + (weight * shift.view(1, -1, *taps)).flatten(1).sum(1)
        weight = weight * scale.view(1, -1, *taps)
    if isinstance(after, _BatchNorm):
        scale, shift = bn_affine(after)
        weight = weight * scale.view(-1, 1, *taps)
        bias = bias * scale + shift
    dtype = layer.weight.dtype
    return weight.to(dtype), bias.to(dtype)


@torch.no_grad()
def fold_bn_into_producer(layer: Layer, bn: _BatchNorm) -> None:
    """Make ``layer`` compute ``bn(layer(x))``."""
    assign_weights(layer, *folded_weights(layer, after=bn))


@torch.no_grad()
def fold_bn_into_consumer(bn: _BatchNorm, layer: Layer) -> None:
    """Make ``layer`` compute ``layer(bn(x))``; ``layer`` must be a Linear
    or an unpadded, ungrouped convolution."""
    assign_weights(layer, *folded_weights(layer, before=bn))


@torch.no_grad()
def assign_weights(layer: Layer, weight: torch.Tensor,
                   bias: torch.Tensor) -> None:
    """Write folded weights into ``layer`` (adding a bias if it has none)."""
    layer.weight.copy_(weight)
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros_like(bias))
    layer.bias.copy_(bias)
