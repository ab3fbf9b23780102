"""Parameters and FLOPs of the CMT variants, next to the paper's figures.

    python tools/complexity.py [--out FILE.md]

Counts each released variant as an ImageNet classifier at its pre-training
resolution, and the backbone alone (no head) at a 1280x800 detection input.
Two FLOP conventions (see :mod:`mmcmt.utils.complexity`): ``macs`` (convs,
linear layers and attention products: the paper's) and ``mmengine``
(mmengine's counter with attention products, which adds norms).
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse
import platform

import torch

from mmcmt.models import CMT, CMTClassifier
from mmcmt.utils import count_flops, count_params

# (params M, FLOPs G) from the CMT paper's ImageNet table.
PAPER = {
    'tiny': (9.49, 0.64),
    'xs': (15.24, 1.54),
    'small': (25.14, 4.04),
    'base': (45.72, 9.33)
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--detection-size',
        type=int,
        nargs=2,
        default=[800, 1280],
        metavar=('H', 'W'),
        help='height and width of the detection input (default: 800 1280)')
    parser.add_argument('--out', help='also write the tables to this file')
    args = parser.parse_args(argv)
    H, W = args.detection_size

    lines = [
        '| variant | input | params (M) | paper params (M) | FLOPs macs (G) '
        '| FLOPs mmengine (G) | paper FLOPs (G) |',
        '|---|---|---|---|---|---|---|'
    ]
    for arch, (paper_params, paper_flops) in PAPER.items():
        model = CMTClassifier(arch).eval()
        size = model.backbone.pretrain_img_size
        with torch.no_grad():
            flops = count_flops(model, (torch.rand(1, 3, *size), ))
        lines.append(
            f'| CMT-{arch} classifier | {size[0]}x{size[1]} | '
            f'{count_params(model) / 1e6:.2f} | {paper_params:.2f} | '
            f'{flops["macs"] / 1e9:.2f} | {flops["mmengine"] / 1e9:.2f} | '
            f'{paper_flops:.2f} |')
    lines += [
        '', '| backbone | input (W x H) | params (M) | FLOPs macs (G) | '
        'FLOPs mmengine (G) | of which attention products (G) |',
        '|---|---|---|---|---|---|'
    ]
    for arch in PAPER:
        model = CMT(arch).eval()
        with torch.no_grad():
            flops = count_flops(model, (torch.rand(1, 3, H, W), ))
        attention = flops['by_operator']['scaled_dot_product_attention']
        lines.append(
            f'| CMT-{arch} | {W}x{H} | {count_params(model) / 1e6:.2f} | '
            f'{flops["macs"] / 1e9:.1f} | {flops["mmengine"] / 1e9:.1f} | '
            f'{attention / 1e9:.1f} |')
    lines += [
        '', f'Measured by tools/complexity.py with torch '
        f'{torch.__version__} on {platform.machine()}.'
    ]
    text = '\n'.join(lines)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
