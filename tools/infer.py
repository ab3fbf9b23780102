"""Draw a model's predictions on an image: boxes (and masks) for detection
configs, the blended class mask for segmentation configs.

    python tools/infer.py IMAGE CONFIG CHECKPOINT --out-dir DIR \
        [--score-thr 0.3] [--cfg-options k=v ...]
    python tools/infer.py IMAGE CONFIG --onnx DIR --out-dir DIR [...]

Writes ``DIR/<image name>`` and prints what it found. IMAGE may be a folder:
each of its images in turn; unreadable files (empty, truncated, not images)
are passed over and listed at the end (exit code 2). ``--onnx DIR`` runs a
detector exported by ``tools/export_detector_onnx.py`` instead of a
checkpoint (its networks in ONNX Runtime, the rest in mmdet's code, as for a
checkpoint).
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse
import os
import os.path as osp

import mmcv

from mmcmt.engine import (UsageError, add_cfg_options_argument,
                          cfg_options_errors, check_file, list_images,
                          load_config, process_images, run_main)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('image')
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?')
    parser.add_argument(
        '--onnx',
        metavar='DIR',
        help='a detector exported by tools/export_detector_onnx.py, '
        'instead of a checkpoint')
    parser.add_argument('--out-dir', required=True)
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.3,
        help='detection score threshold for drawing')
    parser.add_argument('--device', default='cpu')
    add_cfg_options_argument(parser)
    args = parser.parse_args(argv)
    images = list_images(args.image)
    if (args.checkpoint is None) == (args.onnx is None):
        raise UsageError('give a CHECKPOINT or --onnx DIR (one of them)')
    if args.checkpoint:
        check_file(args.checkpoint, 'checkpoint')
    cfg = load_config(args.config, args.cfg_options)
    if args.onnx and cfg.default_scope != 'mmdet':
        raise UsageError('--onnx runs detectors exported by '
                         'tools/export_detector_onnx.py (mmdet configs)')
    cfg.model.backbone.init_cfg = None  # the checkpoint has the weights
    os.makedirs(args.out_dir, exist_ok=True)
    if cfg.default_scope == 'mmseg':
        from mmseg.apis import inference_model as infer
        from mmseg.apis import init_model
        from mmseg.visualization import SegLocalVisualizer as Visualizer
        with cfg_options_errors(args.cfg_options):
            model = init_model(cfg, args.checkpoint, device=args.device)
        options, describe = dict(with_labels=True), segmentation_summary
    else:
        from mmdet.apis import inference_detector as infer
        from mmdet.apis import init_detector
        from mmdet.visualization import DetLocalVisualizer as Visualizer
        with cfg_options_errors(args.cfg_options):
            if args.onnx:
                from mmcmt.deploy import load_onnx_detector
                model = load_onnx_detector(args.onnx, cfg)
            else:
                model = init_detector(cfg, args.checkpoint, device=args.device)
        options = dict(pred_score_thr=args.score_thr)
        describe = detection_summary

    def draw(path):
        out_file = osp.join(args.out_dir, osp.basename(path))
        result = infer(model, path)
        visualizer = Visualizer()
        visualizer.dataset_meta = model.dataset_meta
        visualizer.add_datasample(
            'result',
            mmcv.imread(path, channel_order='rgb'),
            result,
            draw_gt=False,
            out_file=out_file,
            **options)
        for line in describe(result, model.dataset_meta['classes'], args):
            print(line)
        print(f'wrote {out_file}')

    process_images(images, draw)


def segmentation_summary(result, classes, args):
    labels = result.pred_sem_seg.data.unique().tolist()
    yield f'classes present: {", ".join(classes[i] for i in labels)}'


def detection_summary(result, classes, args):
    pred = result.pred_instances
    keep = pred.scores >= args.score_thr
    for box, score, label in zip(pred.bboxes[keep], pred.scores[keep],
                                 pred.labels[keep]):
        yield (f'{classes[label]:>12s} {score:.2f} '
               f'{[round(v) for v in box.tolist()]}')


if __name__ == '__main__':
    run_main(main)
