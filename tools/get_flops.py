"""Parameters and FLOPs of a detector or segmentor config, no dataset needed.

    python tools/get_flops.py CONFIG [--shape H [W]] [--cfg-options k=v ...]

Builds the model from the config (random weights: the backbone's
``init_cfg`` is not loaded), runs a random ``1 x 3 x H x W`` input through
it in tensor mode (backbone, neck and heads; no post-processing) and prints
parameters and FLOPs of the whole model and of the backbone alone, in two
conventions (see :mod:`mmcmt.utils.complexity`): ``macs`` (convolutions,
linear layers and attention products, the CMT paper's) and ``mmengine``
(mmengine's counter plus attention products), and ``macs`` without the
attention products (the convention of the CMT paper's detection table).
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse

import torch
import torch.nn as nn

from mmcmt.engine import add_cfg_options_argument, load_config, run_main
from mmcmt.utils import count_flops, count_params, dummy_data_samples


class TensorMode(nn.Module):
    """``model(x)`` in tensor mode, with the data samples that two-stage
    detectors and segmentors need to run their heads."""

    def __init__(self, model, data_samples):
        super().__init__()
        self.model, self.data_samples = model, data_samples

    def forward(self, x):
        return self.model(x, self.data_samples, mode='tensor')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
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
    H, W = args.shape * (3 - len(args.shape))

    cfg = load_config(args.config, args.cfg_options)
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.default_scope)
    from mmengine.registry import MODELS
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.pop('data_preprocessor', None)
    model = MODELS.build(cfg.model).eval()
    x = torch.rand(1, 3, H, W)
    with torch.no_grad():
        whole = count_flops(
            TensorMode(model, dummy_data_samples(cfg.default_scope, H, W)),
            (x, ))
        backbone = count_flops(model.backbone, (x, ))
    print(f'input: 1 x 3 x {H} x {W} (height {H}, width {W})')
    print('| part | params (M) | FLOPs macs (G) | FLOPs mmengine (G) | '
          'macs without attention products (G) |')
    print('|---|---|---|---|---|')
    for name, module, flops in (('whole model', model, whole),
                                ('backbone', model.backbone, backbone)):
        attention = flops['by_operator']['scaled_dot_product_attention']
        print(f'| {name} | {count_params(module) / 1e6:.2f} | '
              f'{flops["macs"] / 1e9:.1f} | {flops["mmengine"] / 1e9:.1f} | '
              f'{(flops["macs"] - attention) / 1e9:.1f} |')


if __name__ == '__main__':
    run_main(main)
