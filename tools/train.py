"""Train a detector (mmdet) or segmentor (mmseg) config, mmdet's flags.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]

The library is told by the config's ``default_scope``. Multi-GPU and
multi-node runs go through ``tools/dist_train.sh`` (torchrun).
"""
import argparse
import os

from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmcmt.engine import (allow_mmengine_checkpoints, check_data, load_config,
                          setup_cpu_distributed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a CMT model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the actual total batch size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or without a path from the latest '
        'checkpoint in the work dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    allow_mmengine_checkpoints()
    cfg = load_config(args.config, args.cfg_options, args.work_dir,
                      args.launcher)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr='
                               'dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    check_data(cfg, ['train_dataloader', 'val_dataloader'])
    setup_cpu_distributed(cfg)
    runner = (Runner.from_cfg(cfg)
              if 'runner_type' not in cfg else RUNNERS.build(cfg))
    runner.train()


if __name__ == '__main__':
    main()
