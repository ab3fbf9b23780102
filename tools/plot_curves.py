"""Plot the training curves of a work dir: losses and learning rate per
iteration, AP or mIoU per evaluation, from the scalars mmengine logged.

    python tools/plot_curves.py WORK_DIR [--out FILE.png]

Writes ``WORK_DIR/training_curves.png`` by default (never over an existing
file unless it is the one named with ``--out``) and prints its path.
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse
import os.path as osp

from mmcmt.engine import UsageError, run_main
from mmcmt.utils.curves import plot_training_curves


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir')
    parser.add_argument('--out', help='PNG file to write')
    args = parser.parse_args(argv)
    out = args.out or osp.join(args.work_dir, 'training_curves.png')
    if not args.out and osp.exists(out):
        raise UsageError(f'{out} exists; name another file with --out')
    print(f'training curves: {plot_training_curves(args.work_dir, out)}')


if __name__ == '__main__':
    run_main(main)
