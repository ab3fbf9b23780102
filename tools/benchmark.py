"""Speed and memory of CMT beside mmdet's ResNet-50, Swin-T, PVT-S and
PVTv2-b2 and a straightforward CMT, measured fairly: one process, the same
inputs, every model once per round in a rotating order, after warm-up.

Prints a markdown table (each cell the median over the rounds [min-max] and
the ratio to ResNet-50 computed per round), then the goals of
mmcmt/benchmark/goals.yml each checked, and writes the same to a new file.
The method and the results: docs/advanced_guides/speed_and_memory.md; the
code: mmcmt/benchmark/.
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import argparse
import datetime
import os.path as osp
import sys
import textwrap

import torch

from mmcmt.benchmark.harness import Bench, stream_sizes
from mmcmt.benchmark.memory import set_heap
from mmcmt.benchmark.models import (BACKBONES, COMPILED, VARIANTS, select_rows,
                                    setup_process)
from mmcmt.benchmark.report import (check_goals, default_path, report,
                                    write_report)
from mmcmt.benchmark.tasks import TASKS, run_tasks
from mmcmt.engine import run_main

SHAPES = dict(  # task -> default input (B, H, W), the tasks using it, note
    det=((1, 800, 1216), 'det, retinanet, deploy',
         ': a 427x640 COCO image after mmdet\'s resize and padding'),
    cls=((8, 224, 224), 'cls', ''),
    cls64=((64, 224, 224), 'cls64', ''),
    train=((2, 800, 1216), 'train, train_cp, train_attention, retinanet_train',
           ''),
    demo=((2, 256, 256), 'demo, demo_train',
          ': the batch of the detection demo, tools/demo.sh'))


def _epilog():
    rows = [('backbones', BACKBONES), ('variants', VARIANTS),
            ('with --compile', COMPILED)]
    return '\n'.join(['rows:'] + [
        f'  {kind}: {", ".join(names)}' for kind, names in rows
    ] + ['tasks:'] + [
        textwrap.fill(
            text, 79, initial_indent=f'  {name}: ', subsequent_indent='    ')
        for name, text in TASKS.items()
    ])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog())
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument(
        '--amp',
        choices=['bf16', 'fp16'],
        help='run under torch.autocast with this dtype')
    parser.add_argument(
        '--models',
        nargs='+',
        help='rows to run (default: all; ResNet-50 is always run, as the '
        'baseline)')
    parser.add_argument(
        '--tasks', nargs='+', choices=list(TASKS), default=list(TASKS))
    parser.add_argument(
        '--compile',
        action='store_true',
        help='add torch.compile rows (compile time is reported, not timed)')
    parser.add_argument(
        '--rounds',
        type=int,
        default=5,
        help='measured rounds (each runs every model once)')
    parser.add_argument(
        '--train-rounds',
        type=int,
        help='rounds of the training tasks (default: --rounds; fewer keep '
        'a CPU run short, a step at the default size being slow there; 0: '
        'their peak memory only)')
    parser.add_argument(
        '--warmup',
        type=int,
        default=1,
        help='warm-up rounds before the measured ones')
    for task, (default, used, note) in SHAPES.items():
        parser.add_argument(
            f'--{task}-shape',
            type=int,
            nargs=3,
            default=list(default),
            metavar=('B', 'H', 'W'),
            help=f'batch, height, width of the input of the tasks {used} '
            f'(default: {" ".join(map(str, default))}{note})')
    parser.add_argument(
        '--stream-scale',
        type=float,
        default=1.,
        help='scale the stream\'s sizes (H W, each to a multiple of 32), '
        'for quick runs')
    parser.add_argument(
        '--heap',
        choices=['steady', 'default'],
        default='steady',
        help='steady: glibc keeps freed memory for reuse, so timings do not '
        'depend on page faults; default: glibc\'s own settings (see '
        'mmcmt/benchmark/memory.py)')
    parser.add_argument(
        '--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument(
        '--out',
        help='markdown file to write (default: '
        'work_dirs/benchmark/<device>_<time>.md); an existing file is never '
        'overwritten')
    args = parser.parse_args(argv)
    try:
        args.rows = select_rows(args.models, args.compile)
    except ValueError as error:
        parser.error(str(error))
    if {'deploy', 'deploy_stream'} & set(args.tasks) and (args.device != 'cpu'
                                                          or args.amp):
        parser.error('the deploy tasks measure ONNX Runtime on the CPU in '
                     'float32: leave them out (--tasks) with --device cuda '
                     'or --amp')
    if args.rounds < 1 or args.warmup < 0:
        parser.error('--rounds must be at least 1 and --warmup at least 0')
    args.stream = stream_sizes(args.stream_scale)
    if args.out and osp.exists(args.out):
        parser.error(f'{args.out} exists; choose another --out (results '
                     f'are never overwritten)')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        sys.exit('error: --device cuda but torch sees no CUDA device')
    heap = set_heap(args.heap)
    setup_process()
    results = run_tasks(Bench(args), args.rows, args.tasks)
    stamp = datetime.datetime.now()
    goals = check_goals(results)
    text = report(results, args, heap, stamp, goals)
    print('\n' + text)
    out = args.out or default_path(device, stamp)
    write_report(text, out)
    print(f'\nwrote {out}')
    return results, goals


if __name__ == '__main__':
    run_main(main)
