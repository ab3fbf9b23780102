"""CMT's eval forms: the functions of the modules in :mod:`.cmt`, computed
for inference with fewer passes over memory.

Each function here is the ``eval`` form of one module's method (see
:func:`~mmcmt.models.utils.forms.with_forms`), taken in eval mode without
gradients. What makes it faster without changing the function:

- **GELU inside the producing kernel** (:func:`conv_gelu`,
  :func:`linear_gelu`): applied while the output is still in cache instead
  of in a second pass.
- **Eval-mode BatchNorms folded** into neighbouring layers (see
  :mod:`~mmcmt.models.utils.bn_folding`), derived once and kept until a
  parameter changes (:func:`derived`). :meth:`CMT.fuse` writes the same folds
  (:func:`reduction_weights`, :func:`projection_weights`) into the layers
  for good. The BatchNorms in front of padded convolutions cannot fold and
  are applied in place to their producer's fresh output
  (:func:`batch_norm_`).
- **The IRFFN's hidden map in pieces** on a CPU (:func:`map_pieces`): four
  times as wide as its input, it is computed a few megabytes at a time.
- **The resized relative position bias kept** for the next input of the
  same size (:meth:`BiasResizer.resized_and_kept`).

Measurements: docs/advanced_guides/speed_and_memory.md.
"""
import torch
import torch.nn.functional as F

from ..utils.bn_folding import folded_weights
from ..utils.fused_ops import (batch_norm_, conv_gelu, convolve, linear_gelu,
                               plus_identity, runs_on_onednn)
from ..utils.layout import nchw_to_nhwc, nhwc_to_nchw
from ..utils.map_pieces import map_pieces
from ..utils.weight_cache import derived


def stem_layer(layer, x: torch.Tensor) -> torch.Tensor:
    """:class:`StemLayer`: convolution and GELU as one kernel, then the
    BatchNorm in place."""
    conv = layer.conv
    x = conv_gelu(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0],
                  conv.groups)
    return batch_norm_(x, layer.norm)


def local_perception(lpu, x: torch.Tensor) -> torch.Tensor:
    """:class:`LocalPerceptionUnit`: its kernel plus the identity, kept."""
    weight = derived(lpu, plus_identity)
    return nchw_to_nhwc(convolve(lpu, nhwc_to_nchw(x), weight, lpu.bias))


def reduction_weights(sr):
    """The key/value reduction's convolution with its BatchNorm folded in."""
    return folded_weights(sr.conv, after=sr.norm)


def spatial_reduction(sr, x: torch.Tensor) -> torch.Tensor:
    """:class:`SpatialReduction`: one convolution, the BatchNorm folded."""
    return convolve(sr.conv, x, *derived(sr, reduction_weights))


def projection_weights(ffn):
    """The IRFFN's projection ``fc2`` with ``norm2`` (before it) and
    ``norm3`` (after it) folded in: a 1x1 convolution sees no padding."""
    return folded_weights(ffn.fc2, before=ffn.norm2, after=ffn.norm3)


def irffn(ffn, x: torch.Tensor) -> torch.Tensor:
    """:class:`IRFFN`: each GELU inside its producer's kernel, ``norm1`` in
    place (it precedes a padded convolution), ``norm2`` and ``norm3`` folded
    into ``fc2``. On a CPU the hidden map is computed a piece at a time:
    whole images, or bands of rows that bring one row on either side for
    the depthwise convolution and keep only their own rows of its output.
    ``(B, H, W, C) -> (B, H, W, C)``."""
    dw_weight = derived(ffn.dwconv, plus_identity)
    fc2_weight, fc2_bias = derived(ffn, projection_weights)
    if not runs_on_onednn(x):  # CUDA or autocast: the whole map at once
        return F.linear(_hidden(ffn, x, dw_weight), fc2_weight, fc2_bias)
    B, H, W, C = x.shape
    hidden = dw_weight.shape[0]
    out = torch.empty_like(x)
    for images, rows in map_pieces(B, H, W * hidden * x.element_size()):
        top, bottom = max(rows.start - 1, 0), min(rows.stop + 1, H)
        h = _hidden(ffn, x[images, top:bottom], dw_weight)
        h = h[:, rows.start - top:rows.stop - top].reshape(-1, hidden)
        torch.addmm(
            fc2_bias, h, fc2_weight.t(), out=out[images, rows].view(-1, C))
    return out


def _hidden(ffn, x: torch.Tensor, dw_weight: torch.Tensor) -> torch.Tensor:
    """fc1, GELU, norm1, the depthwise convolution (its kernel plus the
    identity) and GELU: ``(B, H, W, C) -> (B, H, W, hidden)``."""
    fc1, dwconv = ffn.fc1, ffn.dwconv
    x = batch_norm_(
        nhwc_to_nchw(linear_gelu(x, fc1.weight, fc1.bias)), ffn.norm1)
    return nchw_to_nhwc(
        conv_gelu(x, dw_weight, dwconv.bias, 1, dwconv.padding[0],
                  dwconv.groups))


def relative_position_bias(stage, grid) -> torch.Tensor:
    """:meth:`CMTStage.bias_for`, kept for the next call at the same grid
    until the stored bias changes."""
    return stage.bias_resizer.resized_and_kept(stage.relative_position_bias,
                                               grid)
