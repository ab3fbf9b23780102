"""The lean training forms under SyncBN (``sync_bn``): two gloo processes
with half the batch each compute what one process computes on the whole
batch through the plain layers."""
import math

import pytest
import torch
from cmt_helpers import (AMP, CP_ARCH, assert_autocast_error_below_autocasts,
                         assert_close_float64, randomize_norms, saved_bytes)

from mmcmt.models import CMT


def _train_step(state, x, kwargs, lean=True, sync=False, amp=None):
    """One training step of CMT (``CP_ARCH``, in ``x``'s dtype) from
    ``state``, in this process or, with ``sync``, as this rank of a process
    group (SyncBatchNorms; ``x`` the whole batch, of which this rank takes
    its part): the outputs, gradients (of the input part and the
    parameters, by name), buffers and the bytes saved for the backward
    pass. Loss: the outputs weighted by a fixed pattern over the whole
    batch."""
    import torch.distributed as dist

    from mmcmt.engine.sync_batch_norm import sync_batch_norm_on_cpu
    rank, world = (dist.get_rank(), dist.get_world_size()) if sync else (0, 1)
    model = CMT(
        CP_ARCH, pretrain_img_size=64, lean_training=lean,
        **kwargs).to(x.dtype)
    model.load_state_dict(state)
    if sync:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.train()
    torch.manual_seed(7 + rank)  # drop-path draws: the same lean or plain
    inp = x.chunk(world)[rank].clone().requires_grad_()
    with sync_batch_norm_on_cpu():
        with torch.autocast(
                'cpu', dtype=amp or torch.bfloat16, enabled=amp is not None):
            saved, outs = saved_bytes(model, inp)
        loss = 0
        for o in outs:
            whole = (o.shape[0] * world, ) + o.shape[1:]
            pattern = torch.arange(math.prod(whole)).view(whole).cos()
            loss = loss + (o.float() * pattern.chunk(world)[rank]).sum()
        loss.backward()
    grads = {'input': inp.grad}
    grads.update((name, p.grad) for name, p in model.named_parameters()
                 if p.grad is not None)
    return dict(
        outs=[o.detach() for o in outs],
        grads=grads,
        buffers=dict(model.named_buffers()),
        saved=saved)


def _train_steps(state, x, steps):
    """:func:`_train_step` for each ``(kwargs, lean, amp)`` of ``steps``,
    as this rank of the process group."""
    return [
        _train_step(state, x, kwargs, lean, sync=True, amp=amp)
        for kwargs, lean, amp in steps
    ]


SYNC_KWARGS = [
    dict(),
    dict(frozen_stages=2),
    dict(with_cp=True),
    dict(norm_eval=True),
]


def test_lean_training_form_under_syncbn_two_processes():
    """SyncBN (``sync_bn`` in the configs): two gloo processes, each with
    half the batch, training through the lean form with SyncBatchNorms,
    compute what one process computes on the whole batch through the plain
    layers with BatchNorms (float64, to rounding: :data:`FLOAT64_TOL`;
    measured: outputs 1.7e-14, gradients 4.6e-14, statistics 2.6e-15): the
    outputs, every gradient (summed over the processes, as DDP reduces
    them) and the running statistics. All of CMT's BatchNorms run as
    SyncBatchNorms: the IRFFN's first two in the lean form, the others as
    torch's SyncBatchNorm computes
    (:func:`~mmcmt.models.utils.batch_norm.sync_batch_norm`, as torch's own
    refuses CPU tensors). A world of one is BatchNorm."""
    from mmcmt.utils.processes import run_in_processes
    torch.manual_seed(0)
    model = CMT(CP_ARCH, pretrain_img_size=64).double()
    model.init_weights()
    randomize_norms(model)
    state = model.state_dict()
    x = torch.rand(4, 3, 64, 96, dtype=torch.float64)
    steps = [(kwargs, True, None) for kwargs in SYNC_KWARGS]
    for world in (2, 1):
        ranks = run_in_processes(_train_steps, world, state, x, steps)
        for kwargs, *parts in zip(SYNC_KWARGS, *ranks):
            whole = _train_step(state, x, kwargs, lean=False)
            names = list(whole['grads'])
            outs = [torch.cat(b) for b in zip(*(p['outs'] for p in parts))]
            grads = []  # summed over the processes, as DDP reduces them
            for name in names:
                got = [p['grads'][name] for p in parts]
                grads.append(torch.cat(got) if name == 'input' else sum(got))
            expected = (whole['outs'], [whole['grads'][n] for n in names],
                        list(whole['buffers'].values()))
            for part in parts:  # every process: the whole batch's statistics
                assert_close_float64(
                    (outs, grads, list(part['buffers'].values())), expected)


@pytest.mark.parametrize('dtype', AMP, ids=str)
def test_lean_training_form_under_syncbn_autocast_and_the_rest(dtype):
    """SyncBN in two processes, autocast, with_cp, frozen stages, norm_eval
    and drop path together: the lean form computes what the plain layers
    compute in the same run, as under autocast alone (outputs and running
    statistics to the bit, gradients within :data:`AUTOCAST_RATIO` of
    autocast's own error; measured 0 here), and keeps fewer bytes."""
    from mmcmt.utils.processes import run_in_processes
    torch.manual_seed(0)
    model = CMT(CP_ARCH, pretrain_img_size=64)
    model.init_weights()
    randomize_norms(model)
    x = torch.rand(4, 3, 64, 96)
    steps = []
    for kwargs in (dict(with_cp=True, frozen_stages=1, drop_path_rate=0.2),
                   dict(norm_eval=True, drop_path_rate=0.2)):
        steps += [(kwargs, True, dtype), (kwargs, False, dtype),
                  (kwargs, False, None)]
    ranks = run_in_processes(_train_steps, 2, model.state_dict(), x, steps)
    for rank in ranks:
        for index in range(0, len(steps), 3):
            lean, plain, full = rank[index:index + 3]
            for a, b in zip(lean['outs'], plain['outs']):
                assert a.dtype == dtype and torch.equal(a, b)
            for name, buffer in plain['buffers'].items():
                assert torch.equal(lean['buffers'][name], buffer), name
            assert_autocast_error_below_autocasts(
                *(list(r['grads'].values()) for r in (lean, plain, full)),
                f'{dtype} {steps[index][0]}')
            if not steps[index][0].get('with_cp'):
                assert lean['saved'] < 0.7 * plain['saved']
