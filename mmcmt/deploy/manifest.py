"""The export folder's format: its file names, reading and writing
``manifest.json``, and what the manifest records about the detector so that
a model built later can be checked against the export (the structure of
each part, the data preprocessor's settings, the dataset meta)."""
import hashlib
import json
import os.path as osp
from typing import List, Tuple

import torch.nn as nn

from ..engine import UsageError

MANIFEST = 'manifest.json'
CONFIG = 'config.py'
FORMAT = 'mmcmt-onnx-detector/2'


def read_manifest(onnx_dir: str) -> dict:
    """The manifest of an export by :func:`export_detector`.

    Raises:
        FileNotFoundError: no such folder, or no manifest or graph in it.
        UsageError: a manifest of another format.
    """
    if not osp.isdir(onnx_dir):
        raise FileNotFoundError(
            f'ONNX export not found: {onnx_dir!r} is not a folder (write '
            f'one with tools/export_detector_onnx.py CONFIG CHECKPOINT '
            f'{onnx_dir})')
    path = osp.join(onnx_dir, MANIFEST)
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{onnx_dir!r} has no {MANIFEST}: not an export of '
            f'tools/export_detector_onnx.py (write one with '
            f'tools/export_detector_onnx.py CONFIG CHECKPOINT NEW_DIR)')
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get('format') != FORMAT:
        raise UsageError(f'{path}: format {manifest.get("format")!r}, '
                         f'expected {FORMAT!r}: export the detector again '
                         f'with tools/export_detector_onnx.py')
    for file in graph_files(manifest):
        if not osp.isfile(osp.join(onnx_dir, file)):
            raise FileNotFoundError(
                f'{onnx_dir!r}: {file} is missing (export again with '
                f'tools/export_detector_onnx.py)')
    return manifest


def graph_files(manifest: dict) -> List[str]:
    """The export's graph files: each part's, followed by that of its size
    inputs when it has some (``features.size_inputs.onnx``)."""
    files = []
    for spec in manifest['parts']:
        files.append(spec['file'])
        if 'size_inputs' in spec:
            files.append(spec['size_inputs']['file'])
    return files


def write_manifest(manifest: dict, onnx_dir: str) -> None:
    """Write ``onnx_dir/manifest.json``."""
    with open(osp.join(onnx_dir, MANIFEST), 'w') as f:
        f.write(_dumps(manifest) + '\n')


def _dumps(value, indent: int = 0) -> str:
    """JSON with one entry per line, lists of numbers or strings on one
    line (shapes, names, palette colours)."""
    pad = '  ' * (indent + 1)
    if isinstance(value, dict) and value:
        items = [
            f'{pad}{json.dumps(k)}: {_dumps(v, indent + 1)}'
            for k, v in value.items()
        ]
        return '{\n' + ',\n'.join(items) + '\n' + '  ' * indent + '}'
    if isinstance(value, list) and any(
            isinstance(v, (dict, list)) for v in value):
        items = [pad + _dumps(v, indent + 1) for v in value]
        return '[\n' + ',\n'.join(items) + '\n' + '  ' * indent + ']'
    return json.dumps(value)


def structure_digest(module: nn.Module) -> Tuple[str, int]:
    """sha256 of the names and shapes of ``module``'s parameters and
    buffers (as built from the config: the structure, not the values) and
    its number of parameter elements."""
    items = sorted((k, tuple(v.shape)) for k, v in module.state_dict().items())
    digest = hashlib.sha256(repr(items).encode()).hexdigest()
    return digest, sum(p.numel() for p in module.parameters())


def preprocessor_meta(model: nn.Module) -> dict:
    """What the data preprocessor (mmdet's Python code, not exported)
    does, to check the config used with the exported graphs."""
    pre = model.data_preprocessor
    mean = getattr(pre, 'mean', None) if getattr(pre, '_enable_normalize',
                                                 False) else None
    std = getattr(pre, 'std', None) if mean is not None else None
    return dict(
        type=type(pre).__name__,
        mean=None
        if mean is None else [round(v, 4) for v in mean.flatten().tolist()],
        std=None
        if std is None else [round(v, 4) for v in std.flatten().tolist()],
        bgr_to_rgb=bool(getattr(pre, '_channel_conversion', False)),
        pad_size_divisor=int(getattr(pre, 'pad_size_divisor', 1)))


def to_json(value):
    """``value`` with tuples as lists, numbers and strings kept (for
    dataset meta)."""
    return json.loads(json.dumps(value, default=str))


def dataset_meta(meta: dict) -> dict:
    """The manifest's dataset meta as mmdet keeps it (palette colours as
    tuples)."""
    meta = dict(meta)
    if isinstance(meta.get('palette'), list):
        meta['palette'] = [
            tuple(c) if isinstance(c, list) else c for c in meta['palette']
        ]
    return meta
