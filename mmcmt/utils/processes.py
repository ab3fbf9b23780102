"""A function run in a group of local gloo processes: how the tests and the
benchmarks reproduce a distributed run (SyncBN across processes, gradients
reduced as DDP reduces them) on one CPU machine."""
import os
import os.path as osp
import socket
import tempfile
from typing import Callable, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_in_processes(fn: Callable, world_size: int, *args) -> List:
    """``fn(*args)`` in each of ``world_size`` new processes that form a gloo
    process group on this machine; returns what each rank's ``fn`` returned
    (sent back with ``torch.save``), in rank order. ``fn`` must be
    importable by the new processes (a module-level function). An error in
    a process is raised here."""
    with socket.socket() as sock:  # a port free now, for the rendezvous
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as results:
        mp.spawn(
            _rank, (world_size, port, results, fn, args), nprocs=world_size)
        return [
            torch.load(osp.join(results, f'{rank}.pt'), weights_only=False)
            for rank in range(world_size)
        ]


def _rank(rank, world_size, port, results, fn, args):
    os.environ.setdefault('OMP_NUM_THREADS',
                          str(max(1, (os.cpu_count() or 1) // world_size)))
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    dist.init_process_group(
        'gloo',
        init_method=f'tcp://127.0.0.1:{port}',
        rank=rank,
        world_size=world_size)
    try:
        torch.save(fn(*args), osp.join(results, f'{rank}.pt'))
    finally:
        dist.destroy_process_group()
