"""The command line of ``python -m mmcmt.check``: the arguments, the
sections in order, the header, and the last line ``mmcmt check: N passed,
M failed`` (exit status 1 on any failure)."""
import argparse
import importlib
import time
from collections import OrderedDict, namedtuple

import torch

from ..engine import UsageError
from ..models import CMT
from .plan import make_plan, shrunk
from .report import Report

#: name -> (title, module) of each section, in order; each module's
#: ``run(report, setup)`` runs it (imported when it runs: mmdet and
#: onnxruntime are needed only by some).
SECTIONS = OrderedDict([
    ('environment', ('Environment', 'environment')),
    ('correctness', ('Correctness on {device} (float32, against the '
                     'reference on the CPU)', 'correctness')),
    ('where', ('What runs where (from the profiler)', 'where')),
    ('amp', ('Mixed precision on {device}', 'precision')),
    ('speed', ('Speed and memory on {device}', 'speed')),
])
#: What the sections run on: ``device``, ``arch``, ``plan`` (the sizes,
#: :mod:`.plan`) and ``plant`` (``--plant-mismatch``).
Setup = namedtuple('Setup', 'device arch plan plant')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m mmcmt.check',
        description='Check that mmcmt computes what it should on this '
        'machine and device, how, and how fast; send its output with a bug '
        'report. Exit status 1 if any check failed.')
    parser.add_argument(
        '--device',
        default='cuda' if torch.cuda.is_available() else 'cpu',
        help='the device to check (default: cuda when available, else cpu)')
    parser.add_argument(
        '--arch',
        default='small',
        choices=sorted(CMT.arch_zoo),
        help='the CMT arch (default: small)')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='smaller inputs on a CPU (a few minutes on two cores), fewer '
        'timed rounds; says what it shrank')
    parser.add_argument(
        '--sections',
        nargs='+',
        choices=list(SECTIONS),
        default=list(SECTIONS),
        help='run only these sections (default: all)')
    # for the tests of the check itself: a perturbed weight on the device
    # copy, which the correctness checks must catch
    parser.add_argument(
        '--plant-mismatch', action='store_true', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None, stream=None) -> int:
    """Run the check; returns the exit status (0: every check passed)."""
    args = parse_args(argv)
    try:
        device = torch.device(args.device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        raise UsageError(f'--device {args.device}: {error}') from None
    plan = make_plan(device.type, args.quick)
    report = Report(stream)
    report.line(f'mmcmt check: device {device}, arch {args.arch}'
                f'{", quick" if args.quick else ""}, sections '
                f'{" ".join(args.sections)}')
    if args.quick:
        report.line(f'quick: {shrunk(plan) or "nothing shrunk"}')
    setup = Setup(device, args.arch, plan, args.plant_mismatch)
    start = time.perf_counter()
    for name in args.sections:
        title, module = SECTIONS[name]
        report.section(title.format(device=device))
        began = time.perf_counter()
        with report.guard(name):
            importlib.import_module(f'.{module}',
                                    __package__).run(report, setup)
        report.line(f'  ({name}: {time.perf_counter() - began:.0f} s)')
    report.line(f'\n(took {time.perf_counter() - start:.0f} s in all)')
    report.line(report.summary())
    return 1 if report.failed else 0
