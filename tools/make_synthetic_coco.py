"""Write the synthetic COCO-format shapes data set used by
``configs/retinanet_cmt_ti_fpn_synthetic.py``.

Example::

    python tools/make_synthetic_coco.py data/synthetic_coco

writes ``data/synthetic_coco/{annotations,train2017,val2017}`` (the layout of
mmdet's ``data/coco/``). The same arguments always give the same files.
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse

from mmcmt.datasets import make_synthetic_coco
from mmcmt.datasets.synthetic_coco import CLASSES
from mmcmt.engine import UsageError, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Write a small deterministic COCO-format detection data '
        'set of coloured shapes (circle, square, triangle, cross).')
    parser.add_argument(
        'out_dir', help='folder to write, e.g. '
        'data/synthetic_coco')
    parser.add_argument(
        '--num-train',
        type=int,
        default=400,
        help='training images (default: 400)')
    parser.add_argument(
        '--num-val',
        type=int,
        default=100,
        help='validation images (default: 100)')
    parser.add_argument(
        '--size',
        type=int,
        nargs=2,
        default=(320, 320),
        metavar=('H', 'W'),
        help='image height and width (default: 320 320)')
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
        summary = make_synthetic_coco(
            args.out_dir,
            num_train=args.num_train,
            num_val=args.num_val,
            img_size=tuple(reversed(args.size)),  # (width, height)
            seed=args.seed,
            overwrite=args.overwrite)
    except (FileExistsError, ValueError) as error:
        raise UsageError(error) from error
    for split, counts in summary.items():
        print(f'{split}: {counts["images"]} images, {counts["objects"]} '
              f'objects')
    print(f'classes: {", ".join(CLASSES)}')
    print(f'written to {args.out_dir}')


if __name__ == '__main__':
    run_main(main)
