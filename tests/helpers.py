"""Shared test helpers: the released checkpoints' key shapes and arch
names."""
import glob
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import torch

from mmcmt.testing import (custom_arch_official_shapes,  # noqa: F401
                           random_official_state_dict)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHAPES_FILE = os.path.join(os.path.dirname(__file__), 'data',
                           'official_cmt_shapes.json')
ARCH_OF_VARIANT = {'cmt_ti': 'tiny', 'cmt_xs': 'xs', 'cmt_s': 'small',
                   'cmt_b': 'base'}


def official_shapes():
    """``{variant: {'img_size', 'params', 'state_dict': {key: shape}}}`` of
    the released checkpoints."""
    with open(SHAPES_FILE) as f:
        return json.load(f)


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def run_tool(*args, check=True, env=None):
    """Run ``python ARGS`` in the repository root, output captured."""
    result = subprocess.run([sys.executable] + list(args), cwd=ROOT,
                            capture_output=True, text=True, env=env)
    if check and result.returncode:
        raise AssertionError(f'{args} failed:\n{result.stderr[-3000:]}')
    return result


def scalars(work_dir):
    """Logged training scalars, by iteration, of every run in work_dir."""
    logs = {}
    for path in glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')):
        with open(path) as f:
            for line in f:
                entry = json.loads(line)
                if 'lr' in entry:
                    logs[entry['iter']] = entry
    return logs


def check_resume(config, options, full, checkpoint, final, resumed, log_line):
    """Resume a 4-iteration run of ``tools/train.py`` from ``checkpoint``
    (after iteration 2, copied from the finished run's work dir ``full``) in
    the fresh work dir ``resumed``: it continues at iteration 3 with the same
    learning rates, optimizer steps and meta iteration as the full run, and
    leaves the checkpoint it resumed from as it was."""
    os.makedirs(resumed)
    shutil.copy(osp.join(full, checkpoint), resumed)
    before = open(osp.join(resumed, checkpoint), 'rb').read()
    out = run_tool('tools/train.py', config, '--work-dir', resumed,
                   '--resume', osp.join(resumed, checkpoint),
                   '--cfg-options', *options).stdout
    assert log_line in out
    assert open(osp.join(resumed, checkpoint), 'rb').read() == before
    a, b = scalars(full), scalars(resumed)
    assert sorted(b) == [3, 4]
    for it in (3, 4):
        assert abs(a[it]['lr'] - b[it]['lr']) <= 1e-9 * abs(a[it]['lr'])
    ck_a = torch.load(osp.join(full, final), weights_only=True)
    ck_b = torch.load(osp.join(resumed, final), weights_only=True)
    assert ck_a['meta']['iter'] == ck_b['meta']['iter'] == 4
    steps = {int(s['step']) for s in ck_b['optimizer']['state'].values()}
    assert steps == {4}
