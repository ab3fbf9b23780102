"""``python -m mmcmt.check``: its real output on the CPU with ``--quick``
(every section, the numbers under their thresholds, the kernels that
mmcmt.compat's capabilities call for, the speed ratios, the last line and
exit status 0), and a planted mismatch (a perturbed weight on the device
copy) failing it with exit status 1. Runs on both stacks."""
import re
import sys

import pytest
import torch
from helpers import run_command

from mmcmt import compat
from mmcmt.check import main
from mmcmt.check.cli import SECTIONS
from mmcmt.engine import UsageError

LAST_LINE = re.compile(r'mmcmt check: (\d+) passed, (\d+) failed')
ERROR = re.compile(r'rel\. error ([0-9.e+-]+)')
THRESHOLD = re.compile(r'\(threshold ([0-9.e+-]+)\)')


def run_check(*args, timeout=420):
    return run_command([sys.executable, '-m', 'mmcmt.check'] + list(args),
                       timeout)


def checks(out, status):
    return re.findall(rf'^  \[{status}\] (.*)$', out, re.M)


def test_quick_check_on_the_cpu():
    result = run_check('--device', 'cpu', '--quick')
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-3000:]
    last = out.rstrip().splitlines()[-1]
    match = LAST_LINE.fullmatch(last)
    assert match, last
    passed = checks(out, 'PASS')
    assert int(match[1]) == len(passed) and match[2] == '0'
    assert not checks(out, 'FAIL')
    # every section, in order, and what --quick shrank
    titles = [
        title.format(device='cpu').split(' (')[0]
        for title, _ in SECTIONS.values()
    ]
    starts = [out.index(f'## {title}') for title in titles]
    assert starts == sorted(starts)
    assert re.search(r'^quick: .*det 1x3x800x1216 -> 1x3x\d+x\d+', out, re.M)

    # the environment
    assert re.search(rf'^  torch: +{re.escape(torch.__version__)} ', out, re.M)
    for name, available, _ in compat.capabilities():
        assert re.search(rf'^    {name} +{"yes" if available else "no"} ', out,
                         re.M)
    assert any(
        c.startswith('mmcv ops on cpu: nms and roi_align run') for c in passed)

    # correctness: each error parsed, under its threshold
    correctness = [c for c in passed if 'threshold' in c]
    assert len(correctness) >= 4  # inference, resize, ONNX, training, amp
    for line in correctness:
        errors = [float(e) for e in ERROR.findall(line)] or [
            float(e) for e in re.findall(
                r'(?:outputs|input|parameters) ([0-9.e+-]+)', line)
        ]
        threshold = float(THRESHOLD.search(line)[1])
        assert errors and max(errors) < threshold, line
    assert any(
        c.startswith('training step') and '720 parameters' in c
        for c in passed)
    assert any(c.startswith('ONNX Runtime') for c in passed)

    # what runs where: the kernels compat's capabilities call for
    inference = re.search(r'^  inference 1x3x\d+x\d+: +SDPA (.*)$', out,
                          re.M)[1]
    if compat.HAS_CPU_FLASH_ATTENTION_MASK:
        assert inference == 'flash (CPU) x25'
        assert 'forward: flash (CPU) x25; backward: blockwise' in out
    else:
        assert inference == 'math x25'
        assert 'forward: blockwise (no SDPA kernel)' in out
    assert 'IRFFN trains in its lean form: 25 of 25 blocks' in passed

    # mixed precision: bfloat16 on every stack, float16 where supported
    amp = [c for c in passed if 'autocast) against float32' in c]
    expected = 1 + compat.autocast_supported('cpu', torch.float16)
    assert len(amp) == expected and all('finite' in c for c in amp)

    # speed and memory: figures and ratios parsed
    for row in ('ResNet-50', 'Swin-T', 'CMT-S'):
        cells = re.search(rf'^  {row} +(.*)$', out, re.M)[1].split()
        params = float(cells[0])
        assert 20 < params < 30
        memory = float(cells[-1])
        assert 0 < memory < 8
    for base in ('ResNet-50', 'Swin-T'):
        ratios = re.search(
            rf'^  CMT-S / {base}: +inference ([0-9.]+)x .* training step '
            rf'([0-9.]+)x .* peak memory ([0-9.]+)x$', out, re.M)
        assert ratios and all(0 < float(r) < 50 for r in ratios.groups())


def test_planted_mismatch_fails_the_check():
    """A weight of the device copy scaled by 1.01: every comparison with
    the reference fails, and so does the command (exit status 1)."""
    result = run_check('--device', 'cpu', '--arch', 'tiny', '--quick',
                       '--sections', 'correctness', '--plant-mismatch')
    out = result.stdout
    assert result.returncode == 1, out[-3000:] + result.stderr[-3000:]
    assert 'planted mismatch:' in out
    failed = checks(out, 'FAIL')
    assert any(c.startswith('inference') for c in failed)
    assert any(c.startswith('position bias resized') for c in failed)
    assert any(c.startswith('training step') for c in failed)
    assert not checks(out, 'PASS')
    assert LAST_LINE.fullmatch(out.rstrip().splitlines()[-1])[2] == str(
        len(failed))


def test_bad_device_is_one_line():
    with pytest.raises(UsageError, match='--device nonsense'):
        main(['--device', 'nonsense'])
