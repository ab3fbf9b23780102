"""torch's SyncBatchNorm on CPU tensors, for a process that needs it:
distributed runs on CPUs (gloo, :mod:`.distributed`), the benchmark's
``train_syncbn`` task and the tests train CMT under SyncBN (``sync_bn``).

torch's own module refuses CPU tensors; :func:`install_sync_batch_norm_on_cpu`
patches :meth:`torch.nn.SyncBatchNorm.forward` for the whole process, so it
is installed explicitly by whoever needs it, never at import. CPU tensors
then go through :func:`~mmcmt.models.utils.batch_norm.sync_batch_norm`
(torch's semantics and kept tensors); CUDA tensors keep torch's kernels."""
import contextlib

import torch.nn as nn

from ..models.utils.batch_norm import sync_batch_norm

_TORCH_FORWARD = nn.SyncBatchNorm.forward


def _forward(bn, x):
    """:meth:`torch.nn.SyncBatchNorm.forward`, also for CPU tensors."""
    if x.device.type == 'cpu':
        return sync_batch_norm(bn, x)
    return _TORCH_FORWARD(bn, x)


def install_sync_batch_norm_on_cpu():
    """From now on in this process, torch's SyncBatchNorm modules given CPU
    tensors compute :func:`sync_batch_norm`, so a model converted by
    :meth:`~torch.nn.SyncBatchNorm.convert_sync_batchnorm` (``sync_bn``)
    trains in gloo processes on a CPU as it does on GPUs."""
    nn.SyncBatchNorm.forward = _forward


@contextlib.contextmanager
def sync_batch_norm_on_cpu():
    """:func:`install_sync_batch_norm_on_cpu` within, as before after."""
    before = nn.SyncBatchNorm.forward
    install_sync_batch_norm_on_cpu()
    try:
        yield
    finally:
        nn.SyncBatchNorm.forward = before
