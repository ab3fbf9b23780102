"""CMT's export forms: the functions of the modules in :mod:`.cmt` written
as the graphs that ONNX Runtime runs fastest (see
:func:`~mmcmt.models.utils.forms.with_forms`), traced by
:mod:`mmcmt.deploy`. Each equals its module's method up to float rounding.

- **The IRFFN's 1x1 layers as convolutions**: the whole IRFFN is then one
  chain of NCHW convolutions, which ONNX Runtime runs in its blocked layout
  (NCHWc) throughout; with linear layers on NHWC tokens the four times
  wider hidden map would be transposed and re-laid out around its depthwise
  convolution (12% of CMT-S's backbone and FPN at 800x1216).
- **Attention as ONNX Runtime's fused ``MultiHeadAttention``**, the relative
  position bias an input of the graph (computed once per input size, see
  :meth:`CMT.position_biases`) instead of recomputed in every run.
- **The relative position bias as two thin factors** where a graph
  computes it itself (a backbone exported alone, the size inputs' graph):
  its resize then follows the traced input size and costs little per run
  (:func:`~mmcmt.models.utils.relative_position.
  factored_relative_position_bias`).

Measurements: docs/user_guides/deploy.md.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

from ..utils.attention import factored_biased_attention, onnx_runtime_attention
from ..utils.layout import nchw_to_nhwc, nhwc_to_nchw


def irffn(ffn, x: torch.Tensor) -> torch.Tensor:
    """:class:`IRFFN` with ``fc1`` and ``fc2`` as 1x1 convolutions.
    ``(B, H, W, C) -> (B, H, W, C)``."""

    def pointwise(linear, x):
        return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)

    x = ffn.norm1(F.gelu(pointwise(ffn.fc1, nhwc_to_nchw(x))))
    return nchw_to_nhwc(ffn.norm3(pointwise(ffn.fc2, ffn.depthwise(x))))


def attention(attn, x: torch.Tensor, bias) -> torch.Tensor:
    """:class:`LightweightAttention` with ONNX Runtime's fused attention
    where ``bias`` is the dense bias (a graph input); with its factors
    ``(rows, cols)`` (:func:`relative_position_bias`), which join q and k as
    extra channels (a self-contained graph, see
    :func:`factored_biased_attention`). ``(B, H, W, C) -> (B, H, W, C)``."""
    if isinstance(bias, tuple):
        return attn.attend(
            attn.q(x), attn.keys_values(x), bias, _factored_attention)
    B, H, W, C = x.shape
    q = attn.q(x).reshape(B, H * W, C)
    k, v = attn.keys_values(x).reshape(B, -1, 2, C).unbind(2)
    out = onnx_runtime_attention(q, k, v, bias, attn.num_heads, attn.scale)
    return attn.proj(out.reshape(B, H, W, C))


def _factored_attention(q, k, v, bias, scale):
    return factored_biased_attention(q, k, v, *bias, scale)


def relative_position_bias(stage, grid) -> Tuple[torch.Tensor, torch.Tensor]:
    """:meth:`CMTStage.bias_for` as its factors ``(rows, cols)``."""
    return stage.bias_resizer.factors(stage.relative_position_bias, grid)


def position_biases(model, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """:meth:`CMT.position_biases`, each the product of its factors: an ONNX
    Resize over the key grid of every query costs seconds at detection
    sizes."""
    return tuple(rows @ cols.T for rows, cols in (
        stage.bias_for(grid)
        for stage, grid in zip(model.stages, model.stage_grids(x))))
