"""Train a detector (mmdet) or segmentor (mmseg) config, mmdet's flags.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]

The library is told by the config's ``default_scope``. Multi-GPU and
multi-node runs go through ``tools/dist_train.sh`` (torchrun).
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse

from mmcmt.engine import (UsageError, add_runner_arguments, build_runner,
                          cfg_options_errors, check_data, check_images,
                          load_config, parse_runner_args, run_main)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a CMT model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='automatic mixed precision training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by the actual total batch size')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint, or without a path from the latest '
        'checkpoint in the work dir')
    add_runner_arguments(parser)
    return parse_runner_args(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.work_dir,
                      args.launcher)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
            raise UsageError('--auto-scale-lr needs auto_scale_lr='
                             'dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    check_data(cfg, ['train_dataloader', 'val_dataloader'])
    check_images(cfg, ['train_dataloader', 'val_dataloader'],
                 args.skip_bad_images)
    with cfg_options_errors(args.cfg_options):
        build_runner(cfg).train()


if __name__ == '__main__':
    run_main(main)
