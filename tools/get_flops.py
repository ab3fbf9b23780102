"""Parameters and FLOPs of a detector or segmentor config, or of the CMT
variants; no data set needed.

    python tools/get_flops.py CONFIG [--shape H [W]] [--cfg-options k=v ...]
    python tools/get_flops.py --arch [ARCH ...] [--shape H [W]]

With CONFIG: the model is built from the config (random weights: the
backbone's ``init_cfg`` is not loaded) and a random ``1 x 3 x H x W`` input
runs through its backbone, neck and heads without post-processing (mmdet's
and mmseg's ``mode='tensor'``); a row for the whole model and one for the
backbone alone. With ``--arch`` (tiny, xs, small, base; all four if none
is named): each released ImageNet classifier at its pre-training size, and
the backbone alone (no head) at ``--shape``.

FLOPs in the conventions of :mod:`mmcmt.utils.complexity`: ``FLOPs``
counts convolutions, linear layers and the attention's two matrix products
(q·kᵀ, attn·v), as the CMT paper's ImageNet table does; ``FLOPs
mmengine`` is mmengine's counter (which adds the norms) with those
products; the last column leaves them out, as the paper's detection table
does. The default input, 1280x800 (W x H; ``--shape 800 1280``), is the
size at which detection papers, the CMT paper among them, count FLOPs (the
COCO configs train at up to 1333x800).
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse

import torch
import torch.nn as nn

from mmcmt.engine import (UsageError, add_cfg_options_argument,
                          cfg_options_errors, load_config, run_main)
from mmcmt.utils import complexity, complexity_table, dummy_data_samples

ARCHS = ('tiny', 'xs', 'small', 'base')


class TensorMode(nn.Module):
    """``model(x)`` without post-processing (``mode='tensor'``), with the
    data samples that two-stage detectors and segmentors need to run their
    heads."""

    def __init__(self, model, data_samples):
        super().__init__()
        self.model, self.data_samples = model, data_samples

    def forward(self, x):
        return self.model(x, self.data_samples, mode='tensor')


def config_rows(args, size):
    """The whole model of ``args.config`` and its backbone at ``size``."""
    cfg = load_config(args.config, args.cfg_options)
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.pop('data_preprocessor', None)
    model = MODELS.build(cfg.model).eval()
    x = torch.rand(1, 3, *size)
    samples = dummy_data_samples(cfg.default_scope, *size)
    return [('whole model', size,
             complexity(TensorMode(model, samples), (x, )), 1),
            ('backbone', size, complexity(model.backbone, (x, )), 1)]


def arch_rows(archs, size):
    """Each arch's ImageNet classifier at its pre-training size, then each
    backbone alone at ``size``."""
    from mmcmt.models import CMT, CMTClassifier
    rows = []
    for arch in archs:
        model = CMTClassifier(arch).eval()
        own = tuple(model.backbone.pretrain_img_size)
        rows.append((f'CMT-{arch} classifier', own,
                     complexity(model, (torch.rand(1, 3, *own), )), 2))
    for arch in archs:
        rows.append((f'CMT-{arch} backbone', size,
                     complexity(CMT(arch).eval(),
                                (torch.rand(1, 3, *size), )), 1))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0].replace('\n', ' '))
    parser.add_argument('config', nargs='?', help='a detector or segmentor')
    parser.add_argument(
        '--arch',
        nargs='*',
        choices=ARCHS,
        help='CMT variants instead of a config (all four if none is named)')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=[800, 1280],
        metavar='H W',
        help='input height and width, or one side of a square (as mmdet\'s '
        'tools take it); default 800 1280')
    add_cfg_options_argument(parser)
    args = parser.parse_args(argv)
    if len(args.shape) > 2:
        parser.error(f'--shape takes H and W (or one side), got {args.shape}')
    if (args.config is None) == (args.arch is None):
        raise UsageError('name a CONFIG or --arch, not both' if args.config
                         else 'name a CONFIG, or --arch for the CMT variants')
    if args.arch is not None and args.cfg_options:
        raise UsageError('--cfg-options applies to a CONFIG, not to --arch')
    size = tuple(args.shape * (3 - len(args.shape)))
    with cfg_options_errors(args.cfg_options):
        rows = arch_rows(args.arch or ARCHS, size) if args.arch is not None \
            else config_rows(args, size)
    print(complexity_table(rows))


if __name__ == '__main__':
    run_main(main)
