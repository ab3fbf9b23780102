"""Export a whole detector to ONNX Runtime and check it against PyTorch.

    python tools/export_detector_onnx.py CONFIG CHECKPOINT OUT_DIR
        [--shape H W] [--check-shape B H W] [--check-image IMAGE ...]
        [--score-thr 0.05] [--threads N] [--opset 17] [--cfg-options k=v ...]

Writes to OUT_DIR (which must not exist or be empty: nothing is
overwritten) the tensor graphs of the detector's parts (backbone + neck; the
dense head, or the RPN head and the RoI heads), ``manifest.json`` and the
config (see :mod:`mmcmt.deploy`), traced at ``--shape`` (default: the test
pipeline's Resize scale) with dynamic batch, height and width. Then it
checks ONNX Runtime against PyTorch and prints:

- the largest error of each part's outputs on the traced input and on a
  random input of ``--check-shape`` (default: a batch of 2 at about half the
  size, sides that are not multiples of 32), the same inputs for both;
- the detections of both (mmdet's post-processing in both cases) on each
  ``--check-image`` (default: a random image), boxes with score at least
  ``--score-thr``: how many, how many match (same class, IoU > 0.99).

Run the deployed model with ``tools/test.py CONFIG --onnx OUT_DIR`` (COCO
AP) and ``tools/infer.py IMAGE CONFIG --onnx OUT_DIR --out-dir DIR``.
Needs the optional extras: ``pip install -e .[export]``.
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse
import os.path as osp

import numpy as np
import torch

from mmcmt.deploy import (compare_parts, export_detector, graph_files,
                          load_onnx_detector, match_detections, require_onnx)
from mmcmt.engine import (UsageError, add_cfg_options_argument, check_file,
                          load_config, run_main)
from mmcmt.utils import check_new_folder


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='detection config')
    parser.add_argument('checkpoint', help='checkpoint of that config')
    parser.add_argument('out_dir', help='folder to write (new or empty)')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help="traced image height width (default: the test "
        "pipeline's Resize scale)")
    parser.add_argument(
        '--check-shape',
        type=int,
        nargs=3,
        metavar=('B', 'H', 'W'),
        help='a second input for the part check: batch height width '
        '(default: 2 H/2+1 W/2+3)')
    parser.add_argument(
        '--check-image',
        nargs='+',
        default=[],
        help='images to compare detections on (default: a '
        'random image)')
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.05,
        help='compare the detections with this score or '
        'more')
    parser.add_argument(
        '--threads',
        type=int,
        help='ONNX Runtime intra-op threads (default: '
        'OMP_NUM_THREADS when set, else one per core)')
    parser.add_argument('--opset', type=int, default=17)
    add_cfg_options_argument(parser)
    return parser.parse_args(argv)


def test_scale(cfg):
    """``(H, W)`` of the test pipeline's Resize (short side first when it
    keeps the aspect ratio), or None."""
    for transform in cfg.test_dataloader.dataset.get('pipeline', []):
        if transform.get('type') == 'Resize' and transform.get('scale'):
            width, height = transform['scale']
            if transform.get('keep_ratio'):
                return min(width, height), max(width, height)
            return height, width
    return None


def check_parts(model, onnx_model, shapes):
    """``[(shape, {part: {'max_abs', 'max_rel'}})]`` on random inputs
    ``shapes`` (B, 3, H, W), the same for PyTorch and ONNX Runtime."""
    return [(tuple(shape), compare_parts(model, onnx_model,
                                         torch.randn(*shape)))
            for shape in shapes]


def check_detections(model, onnx_model, images, score_thr):
    """``[(name, match_detections(...))]`` of mmdet's
    ``inference_detector`` with both models, boxes scoring ``score_thr``
    or more."""
    from mmdet.apis import inference_detector
    results = []
    for name, image in images:
        with torch.no_grad():
            a = inference_detector(model, image).pred_instances
            b = inference_detector(onnx_model, image).pred_instances
        results.append((name,
                        match_detections(a[a.scores >= score_thr],
                                         b[b.scores >= score_thr])))
    return results


def main(argv=None):
    args = parse_args(argv)
    require_onnx()
    try:  # refused before the checkpoint is loaded
        check_new_folder(args.out_dir,
                         'choose a new folder (nothing is overwritten)')
    except FileExistsError as error:
        raise UsageError(error) from None
    cfg = load_config(args.config, args.cfg_options)
    if cfg.default_scope != 'mmdet':
        raise UsageError(f'{args.config}: tools/export_detector_onnx.py '
                         f'exports detectors (mmdet configs)')
    check_file(args.checkpoint, 'checkpoint')
    for image in args.check_image:
        check_file(image, 'image')
    shape = args.shape or test_scale(cfg) or (800, 1216)
    if min(shape) < 32:
        raise UsageError(f'--shape {shape[0]} {shape[1]}: at least 32x32')

    from mmdet.apis import init_detector
    torch.manual_seed(0)  # the random inputs: the same printout every run
    model = init_detector(cfg, args.checkpoint, device='cpu')
    manifest = export_detector(
        model,
        cfg,
        args.out_dir,
        shape,
        args.opset,
        meta=dict(source_config=args.config, checkpoint=args.checkpoint))
    print(f'wrote {args.out_dir}: ' + ', '.join(graph_files(manifest)) +
          f', manifest.json, config.py (traced at 1x3x{shape[0]}x'
          f'{shape[1]}, opset {args.opset})')

    onnx_model = load_onnx_detector(args.out_dir, cfg, args.threads)
    height, width = shape
    check_shape = args.check_shape or (2, height // 2 + 1, width // 2 + 3)
    parts = check_parts(model, onnx_model,
                        [(1, 3, height, width),
                         (check_shape[0], 3, *check_shape[1:])])
    print('ONNX Runtime vs PyTorch on the same inputs, largest absolute '
          '(relative) error of each part:')
    for shape_, errors in parts:
        print(f'  input {"x".join(map(str, shape_))}: ' +
              ', '.join(f'{name} {e["max_abs"]:.1e} ({e["max_rel"]:.1e})'
                        for name, e in errors.items()))

    images = [(osp.basename(p), p) for p in args.check_image] or [
        ('a random image', np.random.default_rng(0).integers(
            0, 256, (height * 3 // 4 + 5, width + 11, 3), dtype=np.uint8))
    ]
    detections = check_detections(model, onnx_model, images, args.score_thr)
    print(f'detections with score >= {args.score_thr}, PyTorch vs ONNX '
          f'Runtime (mmdet post-processing in both):')
    for name, m in detections:
        print(f'  {name}: {m["count_a"]} vs {m["count_b"]}, {m["matched"]} '
              f'matched (same class, IoU >= {m["min_iou"]:.4f}, scores '
              f'within {m["max_score_diff"]:.1e})')
    return dict(manifest=manifest, parts=parts, detections=detections)


if __name__ == '__main__':
    run_main(main)
