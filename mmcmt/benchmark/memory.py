"""Memory: the heap regime of the timed process (glibc's ``mallopt``
through ctypes) and the peak memory of a step (CPU: the growth of the peak
resident set in a fresh process; CUDA: the caching allocator's peak).

Why the heap matters: glibc serves a large allocation (above its mmap
threshold, which it raises up to 32 MB as large blocks are freed) with a
fresh mapping, whose every page faults on first touch. How many faults a
model takes then depends on what ran before in the process, not on the
model. So by default (``steady``) the benchmark has glibc keep freed memory
for reuse, as jemalloc and tcmalloc do: the timed runs take almost no page
faults and measure the models' computation. ``default`` leaves glibc's
settings as they are. docs/advanced_guides/speed_and_memory.md gives the
figures both ways.
"""
import ctypes
import gc
import multiprocessing
import os.path as osp

import torch

from .harness import synchronize

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def set_heap(mode):
    """Put this process's allocator in the ``mode`` regime (``'steady'`` or
    ``'default'``, see the module's docstring); returns its description for
    the report's header."""
    if mode == 'default':
        return ('glibc defaults (tensors above its mmap threshold mapped '
                'afresh, with page faults)')
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return 'the platform\'s allocator (not glibc: left as it is)'
    if not (libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
            and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)):
        return 'glibc defaults (mallopt refused the steady settings)'
    return 'steady (glibc keeps freed memory for reuse: no page faults)'


def cuda_peak_memory(fn, device):
    """The caching allocator's peak (bytes) during ``fn()`` above what was
    allocated before."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def cpu_peak_memory(prepare, args, label):
    """Peak memory (bytes) of one step on the CPU, or None (not Linux).

    Measured in a fresh process, where ``prepare(*args)`` (a module-level
    function, so that it can be sent there) builds the model and inputs and
    returns the step: the growth of that process's peak resident set
    (VmHWM) over the step, with glibc serving every allocation of 64 KiB or
    more by its own mapping and unmapping it on free, so that the figure
    counts live memory, not what the allocator keeps cached from other
    rows. ``label`` names the step in an error.
    """
    if not osp.exists('/proc/self/clear_refs'):
        return None
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)  # room for the child
    context = multiprocessing.get_context('spawn')
    queue = context.SimpleQueue()
    child = context.Process(
        target=_child_peak_memory, args=(prepare, args, queue))
    child.start()
    child.join()
    if child.exitcode != 0 or queue.empty():
        raise RuntimeError(f'memory measurement of {label} failed '
                           f'(exit code {child.exitcode})')
    return queue.get()


def _child_peak_memory(prepare, args, queue):
    queue.put(peak_memory_here(prepare, *args))


def peak_memory_here(prepare, *args):
    """Peak memory (bytes) of ``prepare(*args)()`` measured in this process,
    which must be a fresh one (as :func:`cpu_peak_memory` starts, or a rank
    of :func:`mmcmt.utils.processes.run_in_processes`) that has not
    allocated much yet: glibc maps every allocation of 64 KiB or more from
    here on afresh and unmaps it on free."""
    ctypes.CDLL('libc.so.6').mallopt(M_MMAP_THRESHOLD, 64 << 10)
    step = prepare(*args)
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    start = _status_kib('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current RSS
    step()
    return (_status_kib('VmHWM') - start) * 1024


def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')
