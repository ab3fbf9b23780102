"""The environment: versions of everything mmcmt runs on, the device, mmcv's
compiled ops run on it, and :mod:`mmcmt.compat`'s capabilities (which
exact fallbacks are in force), as ``torch.utils.collect_env`` and ``python
-m xformers.info`` print theirs."""
import os.path as osp
import platform
import sys
from importlib import metadata

import torch

from .. import compat
from ..version import __version__

#: (label, distribution) of the packages whose versions are printed.
PACKAGES = [('numpy', 'numpy'), ('mmcv', 'mmcv'), ('mmengine', 'mmengine'),
            ('mmdet', 'mmdet'), ('mmseg', 'mmsegmentation'), ('onnx', 'onnx'),
            ('onnxruntime', 'onnxruntime')]


def run(report, setup) -> None:
    device = setup.device
    report.info('mmcmt',
                f'{__version__} ({osp.dirname(osp.dirname(__file__))})')
    report.info('Python', f'{sys.version.split()[0]} ({platform.platform()})')
    report.info('torch', f'{torch.__version__} ({_torch_build()})')
    for label, distribution in PACKAGES:
        report.info(label, _version(distribution))
    report.info('device', describe_device(device))
    report.line('  capabilities of this torch (mmcmt/compat.py; '
                '"fallback" = mmcmt\'s exact replacement in force):')
    for name, available, text in compat.capabilities():
        report.line(f'    {name:<34} {"yes" if available else "no ":<4}{text}')
    with report.guard(f'mmcv ops on {device.type}'):
        report.check(f'mmcv ops on {device.type}', *mmcv_ops(device))


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return 'not installed'


def _torch_build() -> str:
    parts = [f'CUDA {torch.version.cuda or "none"}']
    if torch.backends.cudnn.is_available():
        parts.append(f'cuDNN {torch.backends.cudnn.version()}')
    capability = getattr(torch.backends.cpu, 'get_cpu_capability', None)
    if capability is not None:
        parts.append(f'CPU kernels {capability()}')
    parts.append(f'{torch.get_num_threads()} threads')
    return ', '.join(parts)


def describe_device(device: torch.device) -> str:
    """The device's name and memory."""
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        return (f'{device}: {props.name}, {props.total_memory / 2**30:.1f} '
                f'GiB, compute capability {props.major}.{props.minor}, '
                f'{torch.cuda.device_count()} visible')
    if device.type == 'cpu':
        name = _proc_field('/proc/cpuinfo', 'model name')
        return f'cpu: {name or platform.processor()}, {_memory_gib()} memory'
    return str(device)


def _proc_field(path: str, field: str):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


def _memory_gib() -> str:
    total = _proc_field('/proc/meminfo', 'MemTotal')
    return f'{int(total.split()[0]) / 2**20:.1f} GiB' if total else 'unknown'


def mmcv_ops(device: torch.device):
    """``(ok, detail)``: whether mmcv's compiled ops (NMS, RoIAlign, which
    mmdet's heads call) run on ``device``, and what mmcv was compiled
    with."""
    try:
        from mmcv.ops import (get_compiler_version, get_compiling_cuda_version,
                              nms, roi_align)
    except ImportError as error:
        return False, (f'mmcv without compiled ops ({error}): mmdet needs '
                       f'the full mmcv')
    built = (f'compiled with {get_compiler_version()}, CUDA '
             f'{get_compiling_cuda_version()}')
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.],
                          [20., 20., 30., 30.]]).to(device)
    scores = torch.tensor([0.9, 0.8, 0.7]).to(device)
    try:
        _, keep = nms(boxes, scores, 0.5)
        pooled = roi_align(
            torch.arange(64.).view(1, 1, 8, 8).to(device),
            torch.tensor([[0., 0., 0., 7., 7.]]).to(device), (2, 2), 1., 0)
    except Exception as error:  # not compiled for this device
        return False, f'{built}; {type(error).__name__}: {error}'
    ok = keep.tolist() == [0, 2] and pooled.shape == (1, 1, 2, 2)
    return ok, f'nms and roi_align run ({built})'
