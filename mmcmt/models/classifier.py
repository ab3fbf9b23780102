"""CMT with the released ImageNet classification head."""
from typing import List, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from ..checkpoint import load_checked, pop_official_cmt, read_checkpoint
from ..compat import register_load_state_dict_pre_hook
from .backbones.cmt import CMT
from .backbones.cmt_weights import init_cmt_weights
from .utils.bn_folding import fold_bn_into_producer


class CMTClsHead(nn.Module):
    """1x1 convolution, BatchNorm, swish, global average pooling, dropout and
    a linear classifier. ``(B, C, H, W) -> (B, num_classes)``."""

    def __init__(self,
                 in_channels: int,
                 fc_dim: int,
                 num_classes: int,
                 dropout: float = 0.):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, fc_dim, 1)
        self.norm = nn.BatchNorm2d(fc_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(fc_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.norm(self.conv(x))).mean((2, 3))
        return self.fc(self.dropout(x))


class CMTClassifier(BaseModule):
    """The released CMT ImageNet classifier: :class:`CMT` plus its head.

    Head, on the last stage's map: 1x1 convolution to ``fc_dim`` channels,
    BatchNorm, swish, global average pooling, dropout, linear classifier.
    Loads the released checkpoints unchanged (official key names are
    converted by a load-state-dict pre-hook). With default arguments its
    parameter count equals the released network's.

    Args:
        arch (str | dict): see :class:`CMT`.
        num_classes (int): classes. Defaults to 1000.
        fc_dim (int): channels of the head's 1x1 convolution. Defaults to
            1280.
        dropout (float): dropout before the classifier. Defaults to 0.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...)``
            loads a released checkpoint, head included.
        **kwargs: other :class:`CMT` arguments (``pretrain_img_size``,
            ``drop_path_rate``, ``in_channels`` ...).
    """

    def __init__(self,
                 arch: Union[str, dict] = 'small',
                 num_classes: int = 1000,
                 fc_dim: int = 1280,
                 dropout: float = 0.,
                 init_cfg: Union[dict, List[dict], None] = None,
                 **kwargs):
        super().__init__(init_cfg=init_cfg)
        self.backbone = CMT(arch, out_indices=(3, ), **kwargs)
        self.head = CMTClsHead(self.backbone.embed_dims[-1], fc_dim,
                               num_classes, dropout)
        register_load_state_dict_pre_hook(self, _convert_official_classifier)

    def init_weights(self):
        """Released initialisation, or the checkpoint of a ``Pretrained``
        ``init_cfg`` (missing keys are an error)."""
        if self._is_init:
            return super().init_weights()
        self.backbone.init_weights()
        self.head.apply(init_cmt_weights)
        configs = self.init_cfg or []
        for config in [configs] if isinstance(configs, dict) else configs:
            if config.get('type') == 'Pretrained':
                load_checked(
                    self,
                    read_checkpoint(config['checkpoint'],
                                    config.get('prefix')),
                    config['checkpoint'])
        self._is_init = True

    @torch.no_grad()
    def fuse(self) -> 'CMTClassifier':
        """:meth:`CMT.fuse` the backbone and fold the head's BatchNorm into
        its 1x1 convolution; for inference only. Returns the model."""
        self.backbone.fuse()
        if not isinstance(self.head.norm, nn.Identity):
            fold_bn_into_producer(self.head.conv, self.head.norm)
            self.head.norm = nn.Identity()
        return self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, num_classes)`` logits."""
        return self.head(self.backbone(x)[-1])


def _convert_official_classifier(module, state_dict, prefix, *args):
    converted = pop_official_cmt(state_dict, prefix)
    if converted is not None:
        state_dict.update((prefix + k, v) for k, v in converted.items())
