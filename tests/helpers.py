"""Shared test helpers: the released checkpoints' key shapes and arch
names, running the tools (with a time limit), a free port, the resume
check."""
import functools
import glob
import hashlib
import json
import os
import os.path as osp
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from mmengine.config import Config

from mmcmt.checkpoint.safe_load import load_file
from mmcmt.reference import (  # noqa: F401 (the tests import them from here)
    custom_arch_official_shapes, random_official_state_dict)
from mmcmt.utils import relative_error  # noqa: F401 (imported from here)
from mmcmt.utils.curves import read_scalars

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
METAFILE = osp.join(ROOT, 'configs', 'metafile.yml')
SHAPES_FILE = os.path.join(
    os.path.dirname(__file__), 'data', 'official_cmt_shapes.json')
ARCH_OF_VARIANT = {
    'cmt_ti': 'tiny',
    'cmt_xs': 'xs',
    'cmt_s': 'small',
    'cmt_b': 'base'
}


def official_shapes():
    """``{variant: {'img_size', 'params', 'state_dict': {key: shape}}}`` of
    the released checkpoints."""
    with open(SHAPES_FILE) as f:
        return json.load(f)


#: Seconds a tool or command started by the tests may run (override with
#: the environment variable MMCMT_TEST_TIMEOUT or the ``timeout`` argument).
TIMEOUT = float(os.environ.get('MMCMT_TEST_TIMEOUT', 900))


def metafile_model(name):
    """The model called ``name`` in configs/metafile.yml (OpenMMLab's
    metafile), which holds the figures that the docs' tables show."""
    with open(METAFILE) as f:
        models = yaml.safe_load(f)['Models']
    found = [model for model in models if model['Name'] == name]
    assert len(found) == 1, (name, [model['Name'] for model in models])
    return found[0]


def get_flops_rows(out):
    """Row name -> {column header: figure} of tools/get_flops.py's table
    (the input as its text, ``'1280x800'``)."""
    lines = [line for line in out.splitlines() if line.startswith('| ')]
    assert lines, out[-2000:]
    header = [c.strip() for c in lines[0].strip('| ').split('|')]
    rows = {}
    for line in lines[1:]:
        name, size, *figures = (c.strip() for c in line.strip('| ').split('|'))
        rows[name] = dict(
            zip(header[1:], [size] + [float(f) for f in figures]))
    return rows


#: configs/metafile.yml's figure -> the column of tools/get_flops.py's table.
METAFILE_COLUMNS = {
    'Input Size (W x H)': 'input (W x H)',
    'Parameters (M)': 'params (M)',
    'FLOPs (G)': 'FLOPs (G)',
    'FLOPs mmengine (G)': 'FLOPs mmengine (G)',
    'Attention Matmuls (G)': 'attention matmuls (G)',
    'FLOPs without attention matmuls (G)':
    'FLOPs without attention matmuls (G)',
}


def assert_metafile_figures(row, metadata):
    """A row of tools/get_flops.py's table (:func:`get_flops_rows`) prints
    the figures of a metafile model's ``metadata``, each the same number at
    the printed precision."""
    checked = {k: v for k, v in metadata.items() if k in METAFILE_COLUMNS}
    assert len(checked) >= 4, metadata
    assert {k: row[METAFILE_COLUMNS[k]] for k in checked} == checked


def digest(root):
    """One SHA-256 of every file under ``root``, names and contents."""
    sha = hashlib.sha256()
    for path in sorted(glob.glob(osp.join(root, '**', '*.*'), recursive=True)):
        sha.update(osp.relpath(path, root).encode())
        sha.update(open(path, 'rb').read())
    return sha.hexdigest()


def run_command(command, timeout=None, env=None, cwd=ROOT):
    """Run ``command`` in ``cwd`` (default: the repository root), output
    captured, in a process group of its own: past ``timeout`` seconds
    (default :data:`TIMEOUT`) the whole group (torchrun's workers too) is
    killed and the test fails."""
    timeout = TIMEOUT if timeout is None else timeout
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f'{command} did not finish in {timeout:g} s:\n'
                             f'{stderr[-3000:]}') from None
    return subprocess.CompletedProcess(command, process.returncode, stdout,
                                       stderr)


def run_tool(*args, check=True, env=None, timeout=None):
    """Run ``python ARGS`` in the repository root, output captured, within
    ``timeout`` seconds (default :data:`TIMEOUT`)."""
    result = run_command([sys.executable] + list(args), timeout, env)
    if check and result.returncode:
        raise AssertionError(f'{args} failed:\n{result.stderr[-3000:]}')
    return result


def free_port():
    """A TCP port that is free now (for torchrun's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def scalars(work_dir):
    """Logged training scalars, by iteration, of every run in work_dir."""
    return {entry['iter']: entry for entry in read_scalars(work_dir)[0]}


def check_resume(config, options, full, checkpoint, final, resumed, log_line):
    """Resume a 4-iteration run of ``tools/train.py`` from ``checkpoint``
    (after iteration 2, copied from the finished run's work dir ``full``) in
    the fresh work dir ``resumed``: it continues at iteration 3 with the same
    learning rates, optimizer steps and meta iteration as the full run,
    leaves the checkpoint it resumed from as it was, and ends with the
    full run's weights and optimizer state, tensor by tensor (the training
    must be deterministic: seeded, no random augmentation that depends on
    the random state at the resume point)."""
    os.makedirs(resumed)
    shutil.copy(osp.join(full, checkpoint), resumed)
    before = open(osp.join(resumed, checkpoint), 'rb').read()
    out = run_tool('tools/train.py', config, '--work-dir', resumed, '--resume',
                   osp.join(resumed, checkpoint), '--cfg-options',
                   *options).stdout
    assert log_line in out
    assert open(osp.join(resumed, checkpoint), 'rb').read() == before
    a, b = scalars(full), scalars(resumed)
    assert sorted(b) == [3, 4]
    for it in (3, 4):
        assert abs(a[it]['lr'] - b[it]['lr']) <= 1e-9 * abs(a[it]['lr'])
    ck_a = load_file(osp.join(full, final))
    ck_b = load_file(osp.join(resumed, final))
    assert ck_a['meta']['iter'] == ck_b['meta']['iter'] == 4
    steps = {int(s['step']) for s in ck_b['optimizer']['state'].values()}
    assert steps == {4}
    # the resumed run loaded the weights and optimizer state it resumed from
    # and trained on as the uninterrupted run did
    start = load_file(osp.join(full, checkpoint))
    assert ck_a['state_dict'].keys() == ck_b['state_dict'].keys()
    assert any(not torch.equal(v, start['state_dict'][k])
               for k, v in ck_a['state_dict'].items())  # it did train
    for key, value in ck_a['state_dict'].items():
        assert torch.equal(value, ck_b['state_dict'][key]), key
    opt_a, opt_b = ck_a['optimizer'], ck_b['optimizer']
    assert opt_a['state'].keys() == opt_b['state'].keys()
    for index, state in opt_a['state'].items():
        assert state.keys() == opt_b['state'][index].keys()
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value),
                               torch.as_tensor(opt_b['state'][index][name])), \
                (index, name)
    assert len(opt_a['param_groups']) == len(opt_b['param_groups'])
    for group_a, group_b in zip(opt_a['param_groups'], opt_b['param_groups']):
        assert group_a['params'] == group_b['params']
        assert group_a['lr'] == pytest.approx(group_b['lr'], rel=1e-9)
        assert group_a['weight_decay'] == group_b['weight_decay']


def loader_options(root, workers=0):
    """--cfg-options that point every data loader of a config at generated
    data in ``root``, with ``workers`` loader processes."""
    options = []
    for split in ('train', 'val', 'test'):
        loader = f'{split}_dataloader'
        options += [
            f'{loader}.dataset.data_root={root}',
            f'{loader}.num_workers={workers}',
            f'{loader}.persistent_workers=False'
        ]
    return options


SYNTHETIC = osp.join(ROOT, 'configs', 'retinanet_cmt_ti_fpn_synthetic.py')


def ade_options(root, workers=0):
    """:func:`loader_options` for a segmentation config, the backbone started
    from random weights (the synthetic config's shapes classifier is what
    tools/demo_seg.sh trains first)."""
    return loader_options(root, workers) + ['model.backbone.init_cfg=None']


@functools.lru_cache()
def _coco_metric_key(config, split):
    """The --cfg-options key of ``config``'s CocoMetric in ``split``'s
    evaluator (a single metric, or one of a list)."""
    evaluator = Config.fromfile(config)[f'{split}_evaluator']
    if isinstance(evaluator, dict):
        return f'{split}_evaluator'
    return f'{split}_evaluator.' + str([m['type'] for m in evaluator
                                        ].index('CocoMetric'))


def coco_options(root, workers=0, config=SYNTHETIC):
    """:func:`loader_options` for a COCO config (by default the synthetic
    one, which most tests train), with its evaluators, at ``root`` (ending
    with a slash); the backbone starts from random weights (the synthetic
    config's shapes classifier is what tools/demo.sh trains first: the
    pretraining tool's test covers that route)."""
    options = loader_options(root, workers)
    for split in ('val', 'test'):
        options.append(f'{_coco_metric_key(config, split)}.ann_file='
                       f'{root}annotations/instances_val2017.json')
    options.append('model.backbone.init_cfg=None')
    # a model trained for a few iterations may score every box under the
    # default 0.05; keep them all so that COCO metrics are always computed
    options.append('model.test_cfg.score_thr=0.0')
    return options
