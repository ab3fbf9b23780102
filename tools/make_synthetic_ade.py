"""Write the synthetic ADE20K-format shapes data set used by
``configs/fpn_cmt_ti_synthetic_ade.py``.

Example::

    python tools/make_synthetic_ade.py data/synthetic_ade

writes ``data/synthetic_ade/{images,annotations}/{training,validation}`` (the
layout of mmseg's ``data/ade/ADEChallengeData2016``). The same arguments
always give the same files.
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse

from mmcmt.datasets import make_synthetic_ade
from mmcmt.datasets.synthetic_ade import CLASSES
from mmcmt.engine import UsageError, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Write a small deterministic ADE20K-format segmentation '
        'data set of coloured shapes (background, circle, square, triangle, '
        'cross).')
    parser.add_argument(
        'out_dir', help='folder to write, e.g. '
        'data/synthetic_ade')
    parser.add_argument(
        '--num-train',
        type=int,
        default=2000,
        help='training images (default: 2000)')
    parser.add_argument(
        '--num-val',
        type=int,
        default=100,
        help='validation images (default: 100)')
    parser.add_argument(
        '--size',
        type=int,
        nargs=2,
        default=(128, 128),
        metavar=('H', 'W'),
        help='image height and width (default: 128 128)')
    parser.add_argument(
        '--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace an existing data set in OUT_DIR')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        summary = make_synthetic_ade(
            args.out_dir,
            num_train=args.num_train,
            num_val=args.num_val,
            img_size=tuple(reversed(args.size)),  # (width, height)
            seed=args.seed,
            overwrite=args.overwrite)
    except (FileExistsError, ValueError) as error:
        raise UsageError(error) from error
    for split, counts in summary.items():
        total = max(sum(counts['pixels']), 1)
        shares = ', '.join(f'{name} {100 * n / total:.1f}%'
                           for name, n in zip(('unlabelled', ) +
                                              CLASSES, counts['pixels']))
        print(f'{split}: {counts["images"]} images, {counts["shapes"]} '
              f'shapes; pixels: {shares}')
    print(f'classes (label PNG values 1..{len(CLASSES)}; 0 = unlabelled): '
          f'{", ".join(CLASSES)}')
    print(f'written to {args.out_dir}')


if __name__ == '__main__':
    run_main(main)
