"""The ``train_syncbn`` task: training steps as the configs train in
distributed runs (``sync_bn``: every BatchNorm a SyncBatchNorm), in two
local gloo processes that each take half of the batch and half of the
threads. On a CPU the SyncBatchNorms compute
:func:`~mmcmt.models.utils.batch_norm.sync_batch_norm` (torch's own refuses
CPU tensors; the same semantics and kept tensors). No DDP wrapper: the
step's activations, not the gradients' buckets, are what is measured."""
import os
from collections import OrderedDict

import torch
import torch.distributed as dist

from mmcmt.engine.sync_batch_norm import install_sync_batch_norm_on_cpu
from mmcmt.utils.processes import run_in_processes
from .harness import MedianSpread, interleaved, make_inputs
from .memory import peak_memory_here
from .models import setup_process
from .train_steps import prepare_train_step, train_rounds

#: Processes of a SyncBN step.
WORLD_SIZE = 2


def syncbn_task(bench, rows, results):
    """``train_syncbn`` for ``rows``: each row's peak memory per process
    (the larger of the two; each row in fresh processes), then the rows'
    steps timed in interleaved rounds in one pair of processes."""
    if bench.device.type != 'cpu':
        print('  train_syncbn: CPU only (gloo processes on this machine)')
        return
    args = bench.args
    for name, (base, variant) in rows.items():
        results[name]['train_syncbn_mem'] = max(
            run_in_processes(_rank_peak_memory, WORLD_SIZE, args, base,
                             variant))
    if not train_rounds(args):
        return  # peak memory only
    print(
        f'  train_syncbn: {len(rows)} models, interleaved, in '
        f'{WORLD_SIZE} processes',
        flush=True)
    times = run_in_processes(_rank_timings, WORLD_SIZE, args, rows)[0]
    for name, values in times.items():
        results[name]['train_syncbn'] = MedianSpread(values)


def _setup_rank(args):
    threads = (args.threads or os.cpu_count() or WORLD_SIZE) // WORLD_SIZE
    torch.set_num_threads(max(1, threads))
    setup_process()
    install_sync_batch_norm_on_cpu()
    return make_inputs(args, torch.device('cpu'))['train']


def _prepare(args, base, variant):
    return prepare_train_step(args, base, variant, 'train_syncbn',
                              _setup_rank(args))


def _rank_peak_memory(args, base, variant):
    return peak_memory_here(_prepare, args, base, variant)


def _rank_timings(args, rows):
    """name -> this rank's step times, the processes starting each step
    together (the wait for the other not timed)."""
    x = _setup_rank(args)
    runs = OrderedDict()
    for name, (base, variant) in rows.items():
        runs[name] = _timed(
            prepare_train_step(args, base, variant, 'train_syncbn', x))
    times = interleaved(runs, torch.device('cpu'), train_rounds(args),
                        args.warmup)
    return {
        name: [t['step'] for t in values]
        for name, values in times.items()
    }


def _timed(step):

    def run():
        import time
        dist.barrier()
        start = time.perf_counter()
        step()
        return dict(step=time.perf_counter() - start)

    return run
