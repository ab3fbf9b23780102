"""Export a CMT backbone to ONNX and check it against PyTorch.

    python tools/export_backbone_onnx.py OUT.onnx [--arch small]
        [--checkpoint FILE] [--shape H W] [--check-shape B H W] [--no-fuse]
        [--opset 17]

The model takes ``input`` ``(batch, 3, height, width)``, all three dynamic
(any size of at least 32x32: padding to a multiple of 32 and the resizing
of the relative position biases are part of the graph), and returns
``out0`` ... ``out3``, the stage maps at strides 4 to 32. BatchNorms are
folded first (:meth:`CMT.fuse`) unless ``--no-fuse``. After exporting,
onnxruntime runs the file at the traced shape and at ``--check-shape`` and
the maximum absolute error against PyTorch is printed for each output.

Needs the optional ``export`` extras: ``pip install -e .[export]``
(onnx, onnxruntime).
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse
import os.path as osp

from mmcmt.deploy import check_backbone, export_backbone, require_onnx
from mmcmt.engine import UsageError, run_main
from mmcmt.models import CMT
from mmcmt.models.backbones.cmt import MAX_STRIDE


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out', help='.onnx file to write (never overwritten)')
    parser.add_argument('--arch', default='small', help='CMT arch name')
    parser.add_argument(
        '--checkpoint',
        help='released or mmcmt checkpoint '
        '(default: random weights)')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        default=[800, 1216],
        metavar=('H', 'W'),
        help='traced input height width')
    parser.add_argument(
        '--check-shape',
        type=int,
        nargs=3,
        default=[2, 608, 1000],
        metavar=('B', 'H', 'W'),
        help='a second input to check the dynamic axes on: batch height '
        'width')
    parser.add_argument(
        '--no-fuse', action='store_true', help='keep the BatchNorms')
    parser.add_argument('--opset', type=int, default=17)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    require_onnx()
    if osp.exists(args.out):
        raise UsageError(f'{args.out} exists; choose another file name')
    shapes = dict(
        zip(('--shape', '--check-shape'), (args.shape, args.check_shape[1:])))
    for option, sides in shapes.items():
        if min(sides) < MAX_STRIDE:
            raise UsageError(
                f'{option}: CMT needs inputs of at least {MAX_STRIDE}x'
                f'{MAX_STRIDE} pixels, got {sides[0]}x{sides[1]}')
    model = CMT(args.arch)
    if args.checkpoint:
        model.load_pretrained(args.checkpoint)
    model.eval()
    if not args.no_fuse:
        model.fuse()
    export_backbone(model, args.out, args.shape, args.opset)
    print(f'wrote {args.out} (arch {args.arch}, traced at 1x3x'
          f'{args.shape[0]}x{args.shape[1]}, '
          f'{"BatchNorms kept" if args.no_fuse else "BatchNorms folded"})')
    batch, height, width = args.check_shape
    results = check_backbone(model, args.out, [(1, 3, *args.shape),
                                               (batch, 3, height, width)])
    print('onnxruntime vs PyTorch, max abs error per output:')
    for shape, errors in results:
        print(f'  input {"x".join(map(str, shape))}: ' +
              ', '.join(f'{e:.2e}' for e in errors))
    return results


if __name__ == '__main__':
    run_main(main)
