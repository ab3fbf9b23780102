"""CMT: Convolutional Neural Networks Meet Vision Transformers.

A faithful, dense-prediction-ready implementation of the released CMT
networks (Guo et al., CVPR 2022). The core depends only on torch and mmengine.

Each module's ``forward`` is the paper's computation and reads alone. A
module with other forms of the same function lists them above its
``forward`` with :func:`~mmcmt.models.utils.forms.with_forms`: ``eval``,
faster in eval mode without gradients (:mod:`.cmt_inference`); ``training``,
keeping fewer tensors for the backward pass (:mod:`.cmt_lean_training`);
``export``, the graph that ONNX Runtime runs fastest (:mod:`.cmt_export`).

Layout: inside a stage the feature map is kept as an NHWC tensor ``(B, H, W,
C)``, which is at once the token sequence (LayerNorm and linear layers act on
its last dimension) and a channels-last NCHW map for the depthwise
convolutions and BatchNorms (:mod:`~mmcmt.models.utils.layout`). No layout
copies happen between tokens and maps.
"""
import contextlib
import math
from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.utils import to_2tuple
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint import (ArchMismatchError, is_official_cmt, load_checked,
                           read_checkpoint, sub_state_dict)
from ...compat import register_load_state_dict_pre_hook
from ..utils import forms
from ..utils.attention import biased_attention
from ..utils.bn_folding import assign_weights, fold_bn_into_consumer
from ..utils.forms import with_forms
from ..utils.fused_ops import conv_plus_identity
from ..utils.grad_checkpoint import maybe_checkpoint
from ..utils.layout import nchw_to_nhwc, nhwc_to_nchw
from ..utils.relative_position import BiasResizer
from . import cmt_export as export
from . import cmt_inference as inference
from . import cmt_lean_training as lean
from .cmt_arch import (ARCH_KEYS, ARCH_ZOO, MAX_STRIDE, NUM_STAGES,
                       check_loaded_arch, parse_arch, values_kept)
from .cmt_weights import convert_official_backbone, init_cmt_weights


def ceil_div(size, divisor: int):
    """``ceil(size / divisor)`` with non-negative operands only: exported to
    ONNX, whose integer division truncates, it stays a ceiling."""
    return (size + divisor - 1) // divisor


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, in place when no gradient will be needed (inference): a large
    fresh allocation costs about as much as the activation itself."""
    return F.gelu(x) if x.requires_grad else torch.ops.aten.gelu_(x)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop whole samples of a residual branch, as the
    released code draws and scales them (timm's: a Bernoulli mask divided by
    the keep rate). mmcv's ``drop_path`` is another function: it draws
    ``floor(keep + rand)`` and divides ``x`` first, so the same seed drops
    other samples and the kept ones round differently."""
    if rate == 0. or not training:
        return x
    keep = 1. - rate
    mask = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class StemLayer(nn.Module):
    """3x3 convolution, then GELU, then BatchNorm (activation before norm, as
    released). ``(B, C_in, H, W) -> (B, C_out, H/stride, W/stride)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    @with_forms(eval=inference.stem_layer, training=lean.stem_layer)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(gelu(self.conv(x)))


class PatchAggregation(nn.Module):
    """2x2 stride-2 convolution then LayerNorm over channels.

    ``(B, C_in, H, W) -> (B, H/2, W/2, C)`` (NHWC tokens on their grid).
    """

    def __init__(self, in_channels: int, embed_dims: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dims, 2, stride=2)
        self.norm = nn.LayerNorm(embed_dims, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(nchw_to_nhwc(self.proj(x)))


class LocalPerceptionUnit(nn.Conv2d):
    """LPU: ``x + DWConv3x3(x)``, the kernel and the identity as one
    convolution. ``(B, H, W, C) -> (B, H, W, C)``."""

    def __init__(self, embed_dims: int):
        super().__init__(
            embed_dims, embed_dims, 3, padding=1, groups=embed_dims)

    @with_forms(eval=inference.local_perception)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nchw_to_nhwc(conv_plus_identity(self, nhwc_to_nchw(x)))


class SpatialReduction(nn.Sequential):
    """The map that keys and values come from: a depthwise ``ratio`` x
    ``ratio`` stride-``ratio`` convolution, then BatchNorm.
    ``(B, C, H, W) -> (B, C, H/ratio, W/ratio)``."""

    def __init__(self, embed_dims: int, ratio: int):
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(
                    embed_dims,
                    embed_dims,
                    ratio,
                    stride=ratio,
                    groups=embed_dims),
                norm=nn.BatchNorm2d(embed_dims)))

    @with_forms(eval=inference.spatial_reduction)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class LightweightAttention(nn.Module):
    """LMHSA: multi-head attention over spatially reduced keys and values,
    with a relative position bias added to the scaled logits.

    Args:
        embed_dims (int): channels C.
        num_heads (int): attention heads; head dim is C / heads.
        sr_ratio (int): keys and values come from the map reduced by a
            depthwise ``sr_ratio`` x ``sr_ratio`` stride-``sr_ratio``
            convolution and BatchNorm (none when 1).
    """

    def __init__(self, embed_dims: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by '
                             f'num_heads {num_heads}')
        self.num_heads = num_heads
        self.scale = (embed_dims // num_heads)**-0.5
        self.q = nn.Linear(embed_dims, embed_dims)
        self.kv = nn.Linear(embed_dims, 2 * embed_dims)  # k then v
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = SpatialReduction(embed_dims, sr_ratio)

    @with_forms(export=export.attention)
    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): ``(B, H, W, C)`` normalised tokens.
            bias (Tensor): ``(heads, H*W, h*w)`` relative position bias for
                this grid, ``h, w = H // sr_ratio, W // sr_ratio``.

        Returns:
            Tensor: ``(B, H, W, C)``.
        """
        return self.attend(self.q(x), self.keys_values(x), bias)

    def keys_values(self, x: torch.Tensor) -> torch.Tensor:
        """The keys and values, side by side: the reduction of the tokens
        ``x`` (none when ``sr_ratio`` is 1), then ``kv``. ``(B, H, W, C) ->
        (B, h, w, 2C)``."""
        if self.sr_ratio > 1:
            x = nchw_to_nhwc(self.sr(nhwc_to_nchw(x)))
        return self.kv(x)

    @property
    def key_value_input_layer(self) -> nn.Module:
        """The first layer of :meth:`keys_values`: the reduction's
        convolution, or ``kv`` without a reduction."""
        return self.sr.conv if self.sr_ratio > 1 else self.kv

    def keys_values_from(self, y: torch.Tensor) -> torch.Tensor:
        """:meth:`keys_values` from the output ``y`` of its first layer
        (:attr:`key_value_input_layer`; the convolution's is a ``(B, C, h,
        w)`` map): the reduction's BatchNorm, then ``kv``."""
        if self.sr_ratio == 1:
            return y
        return self.kv(nchw_to_nhwc(self.sr.norm(y)))

    def attend(self,
               q: torch.Tensor,
               kv: torch.Tensor,
               bias: torch.Tensor,
               attention: Optional[Callable] = None) -> torch.Tensor:
        """The attention from the projections: ``q`` ``(B, H, W, C)``, the
        keys and values ``kv`` ``(B, h, w, 2C)``, ``bias`` as in
        :meth:`forward`, taken by ``attention(q, k, v, bias, scale)``
        (default :func:`biased_attention`) on split heads. Returns ``(B, H,
        W, C)``."""
        B, H, W, C = q.shape
        heads = self.num_heads
        q = q.reshape(B, H * W, heads, -1).transpose(1, 2)
        k, v = kv.reshape(B, -1, 2, heads, C // heads).permute(2, 0, 3, 1, 4)
        out = (attention or biased_attention)(q, k, v, bias, self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))


class IRFFN(nn.Module):
    """Inverted residual feed-forward network.

    1x1 expansion, GELU, BN; depthwise 3x3 with a residual; GELU, BN; 1x1
    projection, BN. The 1x1 convolutions run as linear layers on NHWC maps.
    ``(B, H, W, C) -> (B, H, W, C)``.
    """

    def __init__(self, embed_dims: int, hidden_dims: int):
        super().__init__()
        self.fc1 = nn.Linear(embed_dims, hidden_dims)
        self.norm1 = nn.BatchNorm2d(hidden_dims)
        self.dwconv = nn.Conv2d(
            hidden_dims, hidden_dims, 3, padding=1, groups=hidden_dims)
        self.norm2 = nn.BatchNorm2d(hidden_dims)
        self.fc2 = nn.Linear(hidden_dims, embed_dims)
        self.norm3 = nn.BatchNorm2d(embed_dims)

    @with_forms(eval=inference.irffn, training=lean.irffn, export=export.irffn)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(nhwc_to_nchw(gelu(self.fc1(x))))
        return self.norm3_tokens(self.fc2(nchw_to_nhwc(self.depthwise(x))))

    def depthwise(self, x: torch.Tensor) -> torch.Tensor:
        """The depthwise convolution with a residual, GELU, ``norm2``:
        ``(B, hidden, H, W) -> (B, hidden, H, W)``."""
        return self.norm2(gelu(conv_plus_identity(self.dwconv, x)))

    def norm3_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``norm3`` of ``fc2``'s output: ``(B, H, W, C) -> (B, H, W, C)``."""
        return nchw_to_nhwc(self.norm3(nhwc_to_nchw(x)))


class CMTBlock(nn.Module):
    """Local perception unit, then attention and IRFFN residual branches.

    ``(B, H, W, C) -> (B, H, W, C)``.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 mlp_ratio: float,
                 sr_ratio: int,
                 drop_path_rate: float = 0.):
        super().__init__()
        self.lpu = LocalPerceptionUnit(embed_dims)
        self.norm1 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.attn = LightweightAttention(embed_dims, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.ffn = IRFFN(embed_dims, int(embed_dims * mlp_ratio))
        self.drop_path_rate = drop_path_rate

    @with_forms(training=lean.cmt_block)
    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``bias``: the attention's, ``(heads, H*W, h*w)``."""
        x = self.lpu(x)
        x = self.add_branch(self.attn(self.norm1(x), bias), x)
        return self.add_branch(self.ffn(self.norm2(x)), x)

    def add_branch(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus the residual branch's output ``y`` (dropped per sample
        in training): ``y`` is a fresh tensor that autograd does not keep,
        and takes the sum in place."""
        return drop_path(y, self.drop_path_rate, self.training).add_(x)


class CMTStage(nn.Module):
    """Patch aggregation, then CMT blocks sharing one relative position bias.

    The bias is stored at its pre-training grid and resized to the running
    grid once per forward (:class:`BiasResizer`; kept per grid in eval mode).

    Args:
        in_channels (int): channels of the input map.
        embed_dims (int): channels of the stage.
        depth (int): number of blocks.
        num_heads (int), mlp_ratio (float), sr_ratio (int): block settings.
        pretrain_grid (tuple[int, int]): query grid of the stored bias.
        drop_path_rates (Sequence[float], optional): one rate per block.
        with_cp (bool): gradient checkpointing of each block.
    """

    def __init__(self,
                 in_channels: int,
                 embed_dims: int,
                 depth: int,
                 num_heads: int,
                 mlp_ratio: float,
                 sr_ratio: int,
                 pretrain_grid: Tuple[int, int],
                 drop_path_rates: Optional[Sequence[float]] = None,
                 with_cp: bool = False):
        super().__init__()
        self.downsample = PatchAggregation(in_channels, embed_dims)
        self.blocks = nn.ModuleList(
            CMTBlock(embed_dims, num_heads, mlp_ratio, sr_ratio, rate)
            for rate in (drop_path_rates or [0.] * depth))
        self.sr_ratio = sr_ratio
        self.bias_resizer = resizer = BiasResizer(pretrain_grid, sr_ratio)
        self.relative_position_bias = nn.Parameter(
            torch.randn(num_heads, math.prod(resizer.pretrain_grid),
                        math.prod(resizer.key_grid(resizer.pretrain_grid))))
        self.with_cp = with_cp
        register_load_state_dict_pre_hook(self, resizer.resize_saved_bias)

    @with_forms(
        eval=inference.relative_position_bias,
        training=lean.relative_position_bias,
        export=export.relative_position_bias,
        compiled_eval=True)
    def bias_for(self, grid: Tuple[int, int]) -> torch.Tensor:
        """The relative position bias resized to a query grid, ``(heads,
        H*W, h*w)``; the stored one at the pre-training grid."""
        bias = self.relative_position_bias
        if tuple(grid) == self.bias_resizer.pretrain_grid:
            return bias
        return self.bias_resizer.resize(bias, grid)

    def train(self, mode: bool = True):
        self.bias_resizer.clear()  # the eval-mode bias, hundreds of MB
        return super().train(mode)

    def forward(self,
                x: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, C_in, H, W) -> (B, C, H/2, W/2)`` (channels-last memory).
        ``bias``: the relative position bias for this grid when computed
        already (:meth:`CMT.position_biases`)."""
        x = self.downsample(x)
        if bias is None:
            bias = self.bias_for(tuple(x.shape[1:3]))
        for block in self.blocks:
            x = maybe_checkpoint(self.with_cp, block, x, bias)
        return nhwc_to_nchw(x)


class CMT(BaseModule):
    """CMT backbone for dense prediction.

    Returns the raw output of each stage (no extra norm), as the released
    checkpoints compute it, at strides 4, 8, 16 and 32.

    Any input of at least 32x32 works. Inputs whose sides are not multiples
    of 32 are zero-padded at the bottom and right to the next multiple (as
    mmdet's data preprocessor would) and each output is cropped to
    ``ceil(H/s) x ceil(W/s)``: the result equals the padded input's.

    Args:
        arch (str | dict): ``'tiny'``/``'ti'``, ``'xs'``, ``'small'``/``'s'``,
            ``'base'``/``'b'``, or a dict with keys ``embed_dims``,
            ``depths``, ``num_heads``, ``mlp_ratios`` (list or one number),
            ``sr_ratios`` and ``stem_channels``.
        in_channels (int): input channels. Defaults to 3.
        out_indices (Sequence[int]): stages to output. Defaults to all four.
        pretrain_img_size (int | tuple[int, int], optional): the input size
            the relative position bias was trained at (a multiple of 32).
            Defaults to the arch's ImageNet resolution (160, 192, 224, 256).
        drop_path_rate (float): stochastic depth rate, rising linearly over
            the blocks. Defaults to 0.
        frozen_stages (int): freeze the stem (0) and stages up to this one
            (1-4), from construction on; -1 freezes nothing.
        norm_eval (bool): keep BatchNorms in eval mode while training.
        with_cp (bool): gradient checkpointing of each block and stem
            layer: activations are recomputed in the backward pass.
        lean_training (str | bool): the memory-lean training forms, which
            compute the plain layers' outputs and gradients keeping two to
            three times fewer values for the backward pass: True in every
            training call, False never (the plain layers), ``'auto'``
            (default) in the calls whose plain layers would keep many
            values per parameter of the model, where memory limits a step
            (:func:`~mmcmt.models.utils.forms.lean_forms_pay`).
        pretrained (str, optional): deprecated, use ``init_cfg=dict(
            type='Pretrained', checkpoint=...)``.
        init_cfg (dict | list[dict], optional): a ``Pretrained`` entry loads
            a released or mmcmt checkpoint (``prefix`` selects a sub-model of
            a larger checkpoint, such as ``'backbone.'``).

    Example:
        >>> model = CMT('small').eval()
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 800, 1199))]
        [(1, 64, 200, 300), (1, 128, 100, 150), (1, 256, 50, 75), \
         (1, 512, 25, 38)]
    """
    arch_zoo = ARCH_ZOO  # (see cmt_arch.py)
    arch_keys = ARCH_KEYS
    num_stages = NUM_STAGES

    def __init__(self,
                 arch: Union[str, dict] = 'small',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 pretrain_img_size: Union[int, Tuple[int, int], None] = None,
                 drop_path_rate: float = 0.,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 lean_training: Union[str, bool] = 'auto',
                 pretrained: Optional[str] = None,
                 init_cfg: Union[dict, List[dict], None] = None):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('pass either init_cfg or the deprecated '
                                 'pretrained, not both')
            print_log(
                'CMT(pretrained=...) is deprecated, use init_cfg=dict('
                "type='Pretrained', checkpoint=...)",
                'current',
                level=30)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)

        self.arch = settings = self.parse_arch(arch)
        self.in_channels = in_channels
        self.out_indices = self._parse_out_indices(out_indices)
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be in -1..{self.num_stages}'
                             f', got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.lean_training = forms.check_lean_training(lean_training)
        if pretrain_img_size is None:
            pretrain_img_size = settings.get('pretrain_img_size', 224)
        self.pretrain_img_size = tuple(to_2tuple(pretrain_img_size))
        if any(s % MAX_STRIDE or s <= 0 for s in self.pretrain_img_size):
            raise ValueError(f'pretrain_img_size must be a positive multiple '
                             f'of {MAX_STRIDE}, got {pretrain_img_size}')
        self.embed_dims = settings['embed_dims']

        stem_channels = settings['stem_channels']
        self.stem = nn.Sequential(
            StemLayer(in_channels, stem_channels, stride=2),
            StemLayer(stem_channels, stem_channels),
            StemLayer(stem_channels, stem_channels))
        rates = torch.linspace(0, drop_path_rate,
                               sum(settings['depths'])).tolist()
        self.stages = nn.ModuleList()
        channels = stem_channels
        for i in range(self.num_stages):
            stride = 4 * 2**i
            depth = settings['depths'][i]
            self.stages.append(
                CMTStage(
                    channels,
                    self.embed_dims[i],
                    depth,
                    settings['num_heads'][i],
                    settings['mlp_ratios'][i],
                    settings['sr_ratios'][i],
                    pretrain_grid=(self.pretrain_img_size[0] // stride,
                                   self.pretrain_img_size[1] // stride),
                    drop_path_rates=rates[:depth],
                    with_cp=with_cp))
            rates = rates[depth:]
            channels = self.embed_dims[i]
        self.fused = False
        register_load_state_dict_pre_hook(self, convert_official_backbone)
        register_load_state_dict_pre_hook(self, check_loaded_arch)
        self._freeze_stages()

    @classmethod
    def parse_arch(cls, arch: Union[str, dict]) -> dict:
        """Settings of an arch name or dict, with per-stage lists
        (:func:`~.cmt_arch.parse_arch`)."""
        return parse_arch(arch, cls.arch_zoo)

    def _parse_out_indices(self, out_indices):
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        parsed = []
        for index in out_indices:
            if not -self.num_stages <= index < self.num_stages:
                raise ValueError(f'out_indices must be in 0..'
                                 f'{self.num_stages - 1}, got {out_indices}')
            parsed.append(index % self.num_stages)
        return tuple(parsed)

    def _freeze_stages(self):
        frozen = [self.stem] if self.frozen_stages >= 0 else []
        frozen += list(self.stages[:max(self.frozen_stages, 0)])
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        if mode and self.fused:
            raise RuntimeError(
                'this CMT was fused for inference (fuse() folded its '
                'BatchNorms away) and cannot be trained; build and load a '
                'new one to train')
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def init_weights(self):
        """Initialise as the released code does, then apply ``init_cfg``.

        A ``Pretrained`` entry loads a released (official layout) or mmcmt
        checkpoint through :func:`read_checkpoint`, converting key names and
        dropping the classification head; missing keys are an error.
        """
        if self._is_init:
            return super().init_weights()  # mmengine warns, changes nothing
        configs = self.init_cfg or []
        configs = [configs] if isinstance(configs, dict) else list(configs)
        pretrained = [c for c in configs if c.get('type') == 'Pretrained']
        self.apply(init_cmt_weights)
        others = [c for c in configs if c.get('type') != 'Pretrained']
        if others:
            from mmengine.model import initialize
            initialize(self, others)
        for config in pretrained:
            self.load_pretrained(config['checkpoint'], config.get('prefix'))
        self._is_init = True

    def load_pretrained(self, checkpoint: str, prefix: Optional[str] = None):
        """Load a released or mmcmt checkpoint file (or URL) into the
        backbone; see :func:`mmcmt.models.utils.read_checkpoint`."""
        state_dict = read_checkpoint(checkpoint, prefix)
        if not is_official_cmt(state_dict) and any(
                k.startswith('backbone.') for k in state_dict):
            # A classifier or detector checkpoint: take its backbone.
            state_dict = sub_state_dict(state_dict, 'backbone.')
        try:
            load_checked(self, state_dict, checkpoint)
        except ArchMismatchError as error:
            raise ArchMismatchError(f'{checkpoint}: {error}') from None

    @torch.no_grad()
    def fuse(self) -> 'CMT':
        """Fold BatchNorms into neighbouring layers, for inference only.

        Folds, where the algebra is exact (see :mod:`..utils.bn_folding`):
        the last stem BatchNorm into the first patch aggregation, and the
        eval forms' folds for good (the key/value reduction's BatchNorm into
        its convolution, the IRFFN's second and third BatchNorms into its
        projection ``fc2``, a 1x1 convolution that sees no padding). The
        others precede padded convolutions and stay. Outputs equal the
        unfused network's up to float rounding.
        Call it after loading the weights; it puts the model in eval mode
        for good (``train()`` then raises). Returns the model.
        """
        if self.fused:
            return self
        self.eval()
        stem_out = self.stem[-1]
        fold_bn_into_consumer(stem_out.norm, self.stages[0].downsample.proj)
        stem_out.norm = nn.Identity()
        for module in list(self.modules()):  # the eval forms' folds
            if isinstance(module, SpatialReduction):
                assign_weights(module.conv,
                               *inference.reduction_weights(module))
                module.norm = nn.Identity()
            elif isinstance(module, IRFFN):
                assign_weights(module.fc2,
                               *inference.projection_weights(module))
                module.norm2, module.norm3 = nn.Identity(), nn.Identity()
        self.fused = True
        return self

    @with_forms(export=export.position_biases)
    def position_biases(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The relative position bias of each stage for ``x``'s size: a
        function of the size only, which a deployed detector computes once
        per size and gives its graph as inputs (:mod:`mmcmt.deploy`).

        Args:
            x (Tensor): ``(B, in_channels, H, W)`` (only its size is used).

        Returns:
            tuple[Tensor]: ``(heads_i, N_i, Nk_i)`` for each stage, ``N_i``
            the stage's grid of the input padded to a multiple of 32 and
            ``Nk_i`` its keys' grid.
        """
        return tuple(
            stage.bias_for(grid)
            for stage, grid in zip(self.stages, self.stage_grids(x)))

    def stage_grids(self, x: torch.Tensor) -> List[Tuple[int, int]]:
        """The token grid of each stage for ``x`` ``(B, C, H, W)``, padded
        to a multiple of 32."""
        padded = [ceil_div(size, MAX_STRIDE) for size in x.shape[-2:]]
        return [
            tuple(p * MAX_STRIDE // (4 * 2**i) for p in padded)
            for i in range(len(self.stages))
        ]

    def forward(
        self,
        x: torch.Tensor,
        position_biases: Optional[Sequence[torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, ...]:
        """
        Args:
            x (Tensor): ``(B, in_channels, H, W)``, H and W at least 32.
            position_biases (Sequence[Tensor], optional):
                :meth:`position_biases` of ``x`` when computed already.

        Returns:
            tuple[Tensor]: for each of ``out_indices`` a contiguous
            ``(B, embed_dims[i], ceil(H/s), ceil(W/s))`` map, s = 4 * 2**i.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f'CMT expects a (B, {self.in_channels}, H, W) input '
                f'(in_channels={self.in_channels}), got shape '
                f'{tuple(x.shape)}; convert the images or set in_channels')
        if not x.is_floating_point():
            raise TypeError(
                f'CMT expects a floating-point input, got {x.dtype}; '
                f'convert the images (for example x.float(), normalised as '
                f'in pre-training)')
        if x.shape[0] == 0:
            raise ValueError(
                f'CMT got an empty batch (input shape {tuple(x.shape)}); '
                f'skip the call when there are no images')
        H, W = x.shape[-2:]
        if H < MAX_STRIDE or W < MAX_STRIDE:
            raise ValueError(
                f'CMT needs inputs of at least {MAX_STRIDE}x{MAX_STRIDE} '
                f'pixels (its coarsest stage has stride {MAX_STRIDE}), got '
                f'{H}x{W}; resize or pad the images')
        if position_biases is not None and \
                len(position_biases) != len(self.stages):
            raise ValueError(
                f'position_biases: expected one per stage '
                f'({len(self.stages)}), got {len(position_biases)}; pass '
                f'CMT.position_biases(x)')
        lean_forms = self.takes_lean_forms(x) \
            if torch.is_grad_enabled() else None
        with (contextlib.nullcontext()
              if lean_forms is None else forms.lean_training(lean_forms)):
            return self._features(x, position_biases
                                  or [None] * len(self.stages))

    def takes_lean_forms(self, x: torch.Tensor) -> bool:
        """Whether a training call on ``x`` takes the lean training forms:
        ``lean_training``, and for ``'auto'`` :func:`lean_forms_pay` for the
        values the plain layers would keep at ``x``'s size
        (:func:`~.cmt_arch.values_kept`)."""
        setting = forms.lean_training_setting(self.lean_training)
        if setting != 'auto':
            return setting
        B, _, H, W = x.shape
        return forms.lean_forms_pay(
            values_kept(self.arch, B, H, W),
            sum(p.numel() for p in self.parameters()))

    def _features(self, x: torch.Tensor,
                  biases: Sequence[Optional[torch.Tensor]]):
        """:meth:`forward` of a checked input."""
        H, W = x.shape[-2:]
        # Pad by the most that can be needed, then crop to the next multiple
        # of 32: the same result as padding by just enough, and in a traced
        # (ONNX) graph the amount follows the input size.
        x = F.pad(x, (0, MAX_STRIDE - 1, 0, MAX_STRIDE - 1))
        x = x[..., :ceil_div(H, MAX_STRIDE) *
              MAX_STRIDE, :ceil_div(W, MAX_STRIDE) * MAX_STRIDE]
        x = x.contiguous(memory_format=torch.channels_last)
        for layer in self.stem:
            # At stride 2 the stem's maps are the largest of the network.
            x = maybe_checkpoint(self.with_cp, layer, x)
        outs = []
        for i, (stage, bias) in enumerate(zip(self.stages, biases)):
            x = stage(x, bias)
            if i in self.out_indices:
                stride = 4 * 2**i
                outs.append(x[..., :ceil_div(H, stride), :ceil_div(W, stride)].
                            contiguous())
        return tuple(outs)
