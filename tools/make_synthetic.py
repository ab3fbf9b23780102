"""Write the embedded shapes data sets of the demos: coloured circles,
squares, triangles and crosses, in COCO format for mmdet or in ADE20K format
for mmseg.

    python tools/make_synthetic.py coco data/synthetic_coco
    python tools/make_synthetic.py ade data/synthetic_ade

``coco`` writes ``{annotations,train2017,val2017}`` (the layout of mmdet's
``data/coco/``) for ``configs/retinanet_cmt_ti_fpn_synthetic.py``; ``ade``
writes ``{images,annotations}/{training,validation}`` (the layout of
mmseg's ``data/ade/ADEChallengeData2016``) for
``configs/fpn_cmt_ti_synthetic_ade.py``. The same arguments always give the
same files; an existing data set is replaced only with ``--overwrite``.
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse
import inspect

from mmcmt.datasets import (make_synthetic_ade, make_synthetic_coco,
                            synthetic_ade, synthetic_coco)
from mmcmt.engine import UsageError, run_main


def coco_summary(summary):
    for split, counts in summary.items():
        print(f'{split}: {counts["images"]} images, {counts["objects"]} '
              f'objects')
    print(f'classes: {", ".join(synthetic_coco.CLASSES)}')


def ade_summary(summary):
    classes = synthetic_ade.CLASSES
    for split, counts in summary.items():
        total = max(sum(counts['pixels']), 1)
        shares = ', '.join(f'{name} {100 * n / total:.1f}%'
                           for name, n in zip(('unlabelled', ) +
                                              classes, counts['pixels']))
        print(f'{split}: {counts["images"]} images, {counts["shapes"]} '
              f'shapes; pixels: {shares}')
    print(f'classes (label PNG values 1..{len(classes)}; 0 = unlabelled): '
          f'{", ".join(classes)}')


#: format -> (what writes it, what it prints of the written data set).
FORMATS = {
    'coco': (make_synthetic_coco, coco_summary),
    'ade': (make_synthetic_ade, ade_summary),
}


def _defaults(kind):
    """The default arguments (``num_train``, ``img_size``...) of the writer
    of ``kind`` (``'coco'``, ``'ade'``)."""
    writer = FORMATS[kind][0]
    return {
        name: parameter.default
        for name, parameter in inspect.signature(writer).parameters.items()
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0].replace('\n', ' '))
    parser.add_argument(
        'format',
        choices=FORMATS,
        help='coco (detection, mmdet) or ade (segmentation, mmseg)')
    parser.add_argument(
        'out_dir', help='folder to write, e.g. data/synthetic_coco')

    def default(name):
        coco, ade = (_defaults(f)[name] for f in FORMATS)
        if name == 'img_size':  # (width, height) -> H W
            coco, ade = (' '.join(map(str, s[::-1])) for s in (coco, ade))
        return f'(default: coco {coco}, ade {ade})'

    parser.add_argument(
        '--num-train',
        type=int,
        help=f'training images {default("num_train")}')
    parser.add_argument(
        '--num-val', type=int, help=f'validation images {default("num_val")}')
    parser.add_argument(
        '--size',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help=f'image height and width {default("img_size")}')
    parser.add_argument(
        '--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace an existing data set in OUT_DIR')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    make, show = FORMATS[args.format]
    given = dict(
        num_train=args.num_train,
        num_val=args.num_val,
        img_size=args.size and tuple(reversed(args.size)))  # (width, height)
    try:
        summary = make(
            args.out_dir,
            seed=args.seed,
            overwrite=args.overwrite,
            **{
                k: v
                for k, v in given.items() if v is not None
            })
    except (FileExistsError, ValueError) as error:
        raise UsageError(error) from error
    show(summary)
    print(f'written to {args.out_dir}')


if __name__ == '__main__':
    run_main(main)
