"""Killed runs resume: a training run killed with SIGKILL in its second epoch
continues from its last complete checkpoint with ``tools/train.py --resume``,
and nothing saved before the kill changes; a checkpoint cut short by a kill
while it was being written is never the one resumed from."""
import glob
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, TIMEOUT, coco_options, run_tool

from mmcmt.checkpoint.safe_load import load_file
from mmcmt.datasets import make_synthetic_coco

SYNTHETIC = 'configs/retinanet_cmt_ti_fpn_synthetic.py'
ITERS_PER_EPOCH = 3


def options(root):
    """2 epochs of 3 iterations on generated data, a checkpoint per epoch,
    no evaluation."""
    result = [
        'train_dataloader.batch_size=2', 'train_cfg.max_epochs=2',
        'train_cfg.val_interval=100', 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.max_keep_ckpts=2'
    ]
    return result + coco_options(f'{root}/')


def log_text(work_dir):
    return ''.join(
        open(p).read() for p in glob.glob(osp.join(work_dir, '*', '*.log')))


def snapshot(work_dir):
    """The bytes of every checkpoint and of last_checkpoint."""
    files = glob.glob(osp.join(
        work_dir, '*.pth')) + [osp.join(work_dir, 'last_checkpoint')]
    return {osp.basename(p): open(p, 'rb').read() for p in files}


@pytest.fixture(scope='module')
def killed(tmp_path_factory):
    """A run killed (SIGKILL) at iteration 1 of its second epoch, after the
    first epoch's checkpoint was written."""
    tmp = tmp_path_factory.mktemp('faults')
    make_synthetic_coco(
        str(tmp / 'coco'),
        num_train=2 * ITERS_PER_EPOCH,
        num_val=1,
        img_size=(96, 96))
    work = str(tmp / 'work')
    process = subprocess.Popen(
        [
            sys.executable, 'tools/train.py', SYNTHETIC, '--work-dir', work,
            '--cfg-options'
        ] + options(tmp / 'coco'),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    try:
        while 'Epoch(train) [2][1/' not in log_text(work):
            assert process.poll() is None, 'training ended before the kill'
            assert time.time() < deadline, 'no second epoch in time'
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    return dict(tmp=tmp, work=work, before=snapshot(work))


def test_killed_in_second_epoch_resumes(killed, tmp_path):
    work, before = killed['work'], killed['before']
    # what the kill left: epoch 1 complete, the run in epoch 2
    assert sorted(before) == ['epoch_1.pth', 'last_checkpoint']
    assert before['last_checkpoint'].decode().endswith('epoch_1.pth')
    resumed = tmp_path / 'work'
    shutil.copytree(work, resumed)  # keep the fixture's copy intact
    out = run_tool('tools/train.py', SYNTHETIC, '--work-dir',
                   str(resumed), '--resume', '--cfg-options',
                   *options(killed['tmp'] / 'coco')).stdout
    assert f'resumed epoch: 1, iter: {ITERS_PER_EPOCH}' in out
    after = snapshot(str(resumed))
    assert after['epoch_1.pth'] == before['epoch_1.pth']  # byte for byte
    final = load_file(str(resumed / 'epoch_2.pth'))
    assert final['meta']['epoch'] == 2
    assert final['meta']['iter'] == 2 * ITERS_PER_EPOCH
    assert after['last_checkpoint'].decode().endswith('epoch_2.pth')


def test_checkpoint_cut_short_is_not_resumed(killed, tmp_path):
    """mmengine writes ``epoch_N.pth`` first and points ``last_checkpoint``
    at it only once it is written, so a kill during the write leaves a
    truncated ``epoch_2.pth`` next to ``last_checkpoint`` naming epoch 1.
    ``--resume`` takes epoch 1 and replaces the truncated file with a
    complete one."""
    resumed = tmp_path / 'work'
    shutil.copytree(killed['work'], resumed)
    complete = (resumed / 'epoch_1.pth').read_bytes()
    (resumed / 'epoch_2.pth').write_bytes(complete[:len(complete) // 3])
    out = run_tool('tools/train.py', SYNTHETIC, '--work-dir',
                   str(resumed), '--resume', '--cfg-options',
                   *options(killed['tmp'] / 'coco')).stdout
    assert f'resumed epoch: 1, iter: {ITERS_PER_EPOCH}' in out
    assert (resumed / 'epoch_1.pth').read_bytes() == complete
    second = load_file(str(resumed / 'epoch_2.pth'))
    assert second['meta']['epoch'] == 2
    assert second['meta']['iter'] == 2 * ITERS_PER_EPOCH
    # and naming the truncated file itself is one clean line, exit code 2
    (resumed / 'cut.pth').write_bytes(complete[:len(complete) // 3])
    result = run_tool(
        'tools/train.py',
        SYNTHETIC,
        '--work-dir',
        str(resumed),
        '--resume',
        str(resumed / 'cut.pth'),
        '--cfg-options',
        *options(killed['tmp'] / 'coco'),
        check=False)
    assert result.returncode == 2 and 'truncated or corrupt' in result.stderr
