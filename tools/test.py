"""Evaluate a checkpoint: COCO AP for detection, mIoU for segmentation.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR]
        [--out FILE] [--amp bf16|fp16] [--cfg-options k=v ...]
        [--launcher pytorch]
    python tools/test.py CONFIG --onnx DIR [...]

``--onnx DIR`` evaluates a detector exported by
``tools/export_detector_onnx.py`` instead of a checkpoint: the model is built
from CONFIG without weights and its exported parts run in ONNX Runtime;
mmdet's test loop, post-processing and evaluator are those of a checkpoint's
run (same config, same data).

Detection prints COCO bbox AP, AP50, AP75, APs, APm, APl (and segm for
Mask R-CNN); segmentation prints aAcc, mIoU and mAcc. ``--show-dir`` writes
pictures of the predictions; ``--out`` dumps raw detection results (.pkl) or
segmentation masks (a directory). ``--amp bf16`` runs the networks under
autocast (bfloat16 on CPUs that support it; fp16 on CUDA) while box
decoding, NMS and resizing stay in float32
(:func:`mmcmt.utils.autocast_networks`).
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse
import os

from mmcmt.engine import (UsageError, add_runner_arguments, build_runner,
                          cfg_options_errors, check_data, check_file,
                          check_images, load_config, parse_runner_args,
                          run_main)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a CMT model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint file')
    parser.add_argument(
        '--onnx',
        metavar='DIR',
        help='a detector exported by tools/export_detector_onnx.py, '
        'instead of a checkpoint')
    parser.add_argument('--show-dir', help='write prediction pictures here')
    parser.add_argument(
        '--amp',
        choices=['bf16', 'fp16'],
        help='run the networks (backbone, neck, heads) under autocast to '
        'this dtype; post-processing stays in float32')
    parser.add_argument(
        '--out',
        help='dump results: a .pkl file for detection, a directory '
        'of masks for segmentation')
    add_runner_arguments(parser)
    return parse_runner_args(parser, argv)


def check_onnx(args, segmentation):
    """--onnx: a detection config, one process, an export in the folder."""
    from mmcmt.deploy import read_manifest, require_onnx
    if segmentation:
        raise UsageError('--onnx evaluates detectors exported by '
                         'tools/export_detector_onnx.py (mmdet configs)')
    if args.launcher != 'none':
        raise UsageError('--onnx runs in one process (ONNX Runtime on the '
                         'CPU); drop --launcher')
    require_onnx(runtime_only=True)
    read_manifest(args.onnx)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.work_dir,
                      args.launcher)
    segmentation = cfg.default_scope == 'mmseg'
    if args.out and not segmentation and \
            not args.out.endswith(('.pkl', '.pickle')):
        raise UsageError(f'--out {args.out}: detection results are dumped '
                         f'to a .pkl file')
    if args.show_dir and not cfg.default_hooks.get('visualization'):
        raise UsageError('--show-dir needs a visualization hook in the '
                         "config's default_hooks")
    if (args.checkpoint is None) == (args.onnx is None):
        raise UsageError('give a CHECKPOINT or --onnx DIR (one of them)')
    if args.onnx and args.amp:
        raise UsageError('--amp runs PyTorch networks under autocast; the '
                         '--onnx graphs run in float32 (drop one of them)')
    if args.onnx:
        check_onnx(args, segmentation)
    else:
        check_file(args.checkpoint, 'checkpoint')
    check_data(cfg, ['test_dataloader'])
    check_images(cfg, ['test_dataloader'], args.skip_bad_images)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        hook = cfg.default_hooks.visualization
        hook.draw, hook.interval = True, 1
        # mmdet's hook writes pictures to test_out_dir (an absolute path
        # stays as it is), mmseg's to the visualizer's save_dir.
        if segmentation:
            cfg.visualizer.save_dir = os.path.abspath(args.show_dir)
        else:
            hook.test_out_dir = os.path.abspath(args.show_dir)
    if args.out and segmentation:
        cfg.test_evaluator['output_dir'] = args.out
    with cfg_options_errors(args.cfg_options):
        runner = build_runner(cfg)
        if args.onnx:
            from mmcmt.deploy import attach_onnx
            attach_onnx(runner.model, args.onnx)
        if args.amp:
            from mmengine.model import is_model_wrapper

            from mmcmt.utils import autocast_networks
            model = runner.model
            autocast_networks(
                model.module if is_model_wrapper(model) else model, args.amp,
                next(model.parameters()).device.type)
        if args.out and not segmentation:
            from mmdet.evaluation import DumpDetResults
            runner.test_evaluator.metrics.append(
                DumpDetResults(out_file_path=args.out))
        runner.test()


if __name__ == '__main__':
    run_main(main)
