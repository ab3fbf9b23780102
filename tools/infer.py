"""Draw a model's predictions on an image: boxes (and masks) for detection
configs, the blended class mask for segmentation configs.

    python tools/infer.py IMAGE CONFIG CHECKPOINT --out-dir DIR [--score-thr 0.3]
    python tools/infer.py IMAGE CONFIG --onnx DIR --out-dir DIR [...]

Writes ``DIR/<image name>`` and prints what it found. IMAGE may be a folder:
each of its images in turn; unreadable files (empty, truncated, not images)
are passed over and listed at the end (exit code 2). ``--onnx DIR`` runs a
detector exported by ``tools/deploy_onnx.py`` instead of a checkpoint (its
networks in ONNX Runtime, the rest in mmdet's code, as for a checkpoint).
"""
import quiet_imports  # noqa: F401  (first: third-party import noise)
import argparse
import os
import os.path as osp

import mmcv

from mmcmt.engine import (UsageError, check_file, list_images, load_config,
                          process_images, run_main)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('image')
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?')
    parser.add_argument('--onnx', metavar='DIR',
                        help='a detector exported by tools/deploy_onnx.py, '
                        'instead of a checkpoint')
    parser.add_argument('--out-dir', required=True)
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection score threshold for drawing')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    images = list_images(args.image)
    if (args.checkpoint is None) == (args.onnx is None):
        raise UsageError('give a CHECKPOINT or --onnx DIR (one of them)')
    if args.checkpoint:
        check_file(args.checkpoint, 'checkpoint')
    cfg = load_config(args.config)
    if args.onnx and cfg.default_scope != 'mmdet':
        raise UsageError('--onnx runs detectors exported by '
                         'tools/deploy_onnx.py (mmdet configs)')
    cfg.model.backbone.init_cfg = None  # the checkpoint has the weights
    os.makedirs(args.out_dir, exist_ok=True)
    if cfg.default_scope == 'mmseg':
        from mmseg.apis import init_model
        model = init_model(cfg, args.checkpoint, device=args.device)
        draw = draw_segmentation
    else:
        from mmdet.apis import init_detector
        if args.onnx:
            from mmcmt.deploy import load_onnx_detector
            model = load_onnx_detector(args.onnx, cfg)
        else:
            model = init_detector(cfg, args.checkpoint, device=args.device)
        draw = draw_detections
    process_images(images, lambda path: draw(model, path, args))


def draw_segmentation(model, path, args):
    from mmseg.apis import inference_model
    from mmseg.visualization import SegLocalVisualizer
    out_file = osp.join(args.out_dir, osp.basename(path))
    result = inference_model(model, path)
    visualizer = SegLocalVisualizer()
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample('result', mmcv.imread(path, channel_order='rgb'),
                              result, draw_gt=False, out_file=out_file,
                              with_labels=True)
    labels = result.pred_sem_seg.data.unique().tolist()
    names = [model.dataset_meta['classes'][i] for i in labels]
    print(f'classes present: {", ".join(names)}')
    print(f'wrote {out_file}')


def draw_detections(model, path, args):
    from mmdet.apis import inference_detector
    from mmdet.visualization import DetLocalVisualizer
    out_file = osp.join(args.out_dir, osp.basename(path))
    result = inference_detector(model, path)
    visualizer = DetLocalVisualizer()
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample('result', mmcv.imread(path, channel_order='rgb'),
                              result, draw_gt=False, out_file=out_file,
                              pred_score_thr=args.score_thr)
    pred = result.pred_instances
    keep = pred.scores >= args.score_thr
    classes = model.dataset_meta['classes']
    for box, score, label in zip(pred.bboxes[keep], pred.scores[keep],
                                 pred.labels[keep]):
        print(f'{classes[label]:>12s} {score:.2f} '
              f'{[round(v) for v in box.tolist()]}')
    print(f'wrote {out_file}')


if __name__ == '__main__':
    run_main(main)
