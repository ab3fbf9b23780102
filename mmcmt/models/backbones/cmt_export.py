"""CMT's forms for ONNX export: the functions of the modules in :mod:`.cmt`
written as the graphs that ONNX Runtime runs fastest (see
:func:`~mmcmt.models.utils.fast_path.with_fast_path`), traced by
:mod:`mmcmt.deploy`. Each equals its module's ``forward`` up to float
rounding.

- **The IRFFN's 1x1 layers as convolutions**: the whole IRFFN is then one
  chain of NCHW convolutions, which ONNX Runtime runs in its blocked layout
  (NCHWc) throughout; with linear layers on NHWC tokens the four times
  wider hidden map would be transposed and re-laid out around its depthwise
  convolution (12% of CMT-S's backbone and FPN at 800x1216).
- **Attention as ONNX Runtime's fused ``MultiHeadAttention``**, the relative
  position bias an input of the graph (computed once per input size, see
  :meth:`CMT.position_biases`) instead of recomputed in every run.

Measurements: docs/user_guides/deploy.md.
"""
import torch
import torch.nn.functional as F

from ..utils.attention import onnx_runtime_attention
from ..utils.fused_ops import conv_plus_identity
from ..utils.layout import nchw_to_nhwc, nhwc_to_nchw


def irffn(ffn, x: torch.Tensor) -> torch.Tensor:
    """:class:`IRFFN` with ``fc1`` and ``fc2`` as 1x1 convolutions.
    ``(B, H, W, C) -> (B, H, W, C)``."""

    def pointwise(linear, x):
        return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)

    x = ffn.norm1(F.gelu(pointwise(ffn.fc1, nhwc_to_nchw(x))))
    x = ffn.norm2(F.gelu(conv_plus_identity(ffn.dwconv, x)))
    return nchw_to_nhwc(ffn.norm3(pointwise(ffn.fc2, x)))


def attention(attn, x: torch.Tensor, bias) -> torch.Tensor:
    """:class:`LightweightAttention` with ONNX Runtime's fused attention,
    when ``bias`` is the dense bias (a graph input); None for the factored
    one (a self-contained graph, see :func:`factored_biased_attention`).
    ``(B, H, W, C) -> (B, H, W, C)``."""
    if not torch.is_tensor(bias):
        return None
    B, H, W, C = x.shape
    q = attn.q(x).reshape(B, H * W, C)
    if attn.sr_ratio > 1:
        x = nchw_to_nhwc(attn.sr(nhwc_to_nchw(x)))
    k, v = attn.kv(x).reshape(B, -1, 2, C).unbind(2)
    out = onnx_runtime_attention(q, k, v, bias, attn.num_heads, attn.scale)
    return attn.proj(out.reshape(B, H, W, C))
