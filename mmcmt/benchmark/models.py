"""The rows of the benchmark: mmdet's ResNet-50, Swin-T, PVT-S and PVTv2-b2,
CMT-Ti/XS/S/B, variants of CMT-S (fused, naive, compiled) and of each CMT
trained through its plain layers; how each
row's backbone and COCO RetinaNet are built (random weights: speed does not
depend on them), made ready for inference and counted.

``CMT-S naive`` is :class:`mmcmt.reference.NaiveCMT`: separate q/k/v, an
explicit attention matrix, token/map reshapes and the bias resized on every
forward, as the released code would run on detection inputs; it shows what
mmcmt's implementation gains.
"""
import os.path as osp
import sys
import warnings
from collections import OrderedDict

import torch

from mmcmt.models import CMT
from mmcmt.reference import naive_cmt
from mmcmt.utils import count_flops

#: The checkout, where the CMT RetinaNet configs are.
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: The row every ratio is taken to; always run.
BASELINE = 'ResNet-50'
# name -> (backbone config, RetinaNet config); all four outputs, random init
BACKBONES = OrderedDict([
    ('ResNet-50', (dict(type='mmdet.ResNet', depth=50),
                   'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')),
    ('Swin-T', (dict(
        type='mmdet.SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        out_indices=(0, 1, 2, 3)),
                'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py')),
    ('PVT-S',
     (dict(type='mmdet.PyramidVisionTransformer', num_layers=[3, 4, 6, 3]),
      'mmdet::pvt/retinanet_pvt-s_fpn_1x_coco.py')),
    ('PVTv2-b2', (dict(
        type='mmdet.PyramidVisionTransformerV2',
        embed_dims=64,
        num_layers=[3, 4, 6, 3]),
                  'mmdet::pvt/retinanet_pvtv2-b2_fpn_1x_coco.py')),
] + [(f'CMT-{short}',
      (dict(type='mmdet.CMT', arch=arch),
       f'configs/retinanet_cmt_{short.lower()}_fpn_1x_coco.py'))
     for short, arch in (('Ti', 'tiny'), ('XS', 'xs'), ('S', 'small'),
                         ('B', 'base'))])
# variant rows: name -> (backbone row, variant)
VARIANTS = OrderedDict([('CMT-S fused',
                         ('CMT-S',
                          'fused')), ('CMT-S naive', ('CMT-S', 'naive')),
                        ('ResNet-50 unfrozen', ('ResNet-50', 'unfrozen'))] +
                       [(f'CMT-{short} plain', (f'CMT-{short}', 'plain'))
                        for short in ('Ti', 'XS', 'S', 'B')])
#: Variants measured by the training tasks only: ``unfrozen`` trains every
#: stage (mmdet's RetinaNet config freezes ResNet-50's stem and first stage;
#: its BatchNorms stay in eval mode, as there and in mmdet's default);
#: ``plain`` trains CMT through its plain layers, without the memory-lean
#: training forms (``lean_training=False`` for every CMT of the step, by
#: :func:`~mmcmt.models.utils.forms.override_lean_training`): what those
#: are measured against, which the rows without it train through
#: (``lean_training=True``), whichever ``'auto'`` would pick.
TRAIN_ONLY = ('unfrozen', 'plain')
COMPILED = OrderedDict([('ResNet-50 compiled', ('ResNet-50', 'compiled')),
                        ('CMT-S compiled', ('CMT-S', 'compiled'))])
NO_CP = ('PVT-S', 'PVTv2-b2')  # mmdet's PVTs have no with_cp
#: Rows of the ``deploy`` task.
DEPLOY_ROWS = ('ResNet-50', 'CMT-Ti', 'CMT-S')


def all_rows(compiled=False):
    """name -> (backbone row, variant) of every row (``''``: the backbone
    as built); the compiled rows only with ``compiled``."""
    return OrderedDict([(name, (name, ''))
                        for name in BACKBONES] + list(VARIANTS.items()) +
                       (list(COMPILED.items()) if compiled else []))


def select_rows(names=None, compiled=False):
    """The rows called ``names`` (default: all) in the table's order, with
    the baseline; ValueError for an unknown name."""
    rows = all_rows(compiled)
    names = list(names or rows)
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise ValueError(f'unknown models {unknown}; choose from {list(rows)}')
    if BASELINE not in names:
        names.insert(0, BASELINE)
    return OrderedDict((n, rows[n]) for n in rows if n in names)


def setup_process():
    """Registries, a quiet logger (init_weights logs every parameter at
    INFO) and the seed, in the main process and in memory-measuring ones."""
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    import mmcmt  # noqa: F401  (registers CMT in mmdet)
    MMLogger.get_instance('benchmark', log_level='WARNING')
    init_default_scope('mmdet')
    torch.manual_seed(0)


def build_backbone(name, variant, with_cp=False, as_trained=False):
    """The backbone of row ``name`` (random weights), or the naive CMT with
    random weights in the released checkpoints' layout. ``as_trained``: as
    the row's RetinaNet config trains it (ResNet-50's frozen stem and first
    stage and ``norm_eval``, Swin-T's drop path and outputs, CMT's drop
    path; the ``unfrozen`` variant with no frozen stage)."""
    from mmdet.registry import MODELS
    cfg = dict(BACKBONES[name][0])
    if as_trained and variant in ('', ) + TRAIN_ONLY:
        cfg = dict(retinanet_config(name, variant).model.backbone)
    if variant == 'naive':
        return naive_cmt(CMT, cfg['arch'])
    if with_cp:
        cfg['with_cp'] = True
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def inference_model(model, variant):
    """``model`` in eval mode, fused or compiled as its variant says."""
    model.eval()  # (mmdet's ResNet.train() returns None: no chaining)
    if 'fused' in variant:
        model.fuse()
    if 'compiled' in variant:
        model = torch.compile(model)
    return model


def retinanet_config(name, variant=''):
    """The COCO RetinaNet config of a backbone row, without pretrained
    weights (for the ``unfrozen`` variant, without frozen stages)."""
    from mmengine.config import Config
    from mmengine.hub import get_config
    path = BACKBONES[name][1]
    cfg = get_config(path) if '::' in path else Config.fromfile(
        osp.join(ROOT, path))
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.pop('pretrained', None)
    if variant == 'unfrozen':
        cfg.model.backbone.frozen_stages = -1
    return cfg


def build_retinanet(name, variant, train=False):
    """The RetinaNet (random weights, eval mode unless ``train``) without
    its data preprocessor: the inputs are normalised tensors already."""
    from mmdet.registry import MODELS
    cfg = retinanet_config(name, variant)
    cfg.model.pop('data_preprocessor', None)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train(train)
    if 'fused' in variant:
        model.backbone.fuse()
    if 'compiled' in variant:
        model.backbone = torch.compile(model.backbone)
    return model


def count_macs(model, shape):
    """Multiply-adds (G) of one ``1 x 3 x H x W`` image (``shape``: B, H,
    W), or None."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the tracer's chatter
            flops = count_flops(model, (torch.rand(1, 3, *shape[1:]), ))
        return flops['macs'] / 1e9
    except Exception as error:  # a model the tracer cannot follow
        print(f'  (MACs not counted: {error})', file=sys.stderr)
        return None
