"""Running an export in ONNX Runtime inside an mmdet detector: the
sessions, the modules that replace the exported parts, and building a
detector whose parts run them."""
import copy
import functools
import io
import os
import os.path as osp
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from ..compat import ONNX_EXPORT_KWARGS
from ..engine import UsageError
from .extras import require_onnx
from .manifest import (CONFIG, dataset_meta, preprocessor_meta, read_manifest,
                       structure_digest)
from .parts import detector_parts, flatten, leaf_names, part_module, unflatten


def ort_session(path: str,
                threads: Optional[int] = None,
                profile_prefix: Optional[str] = None):
    """An ONNX Runtime session on the CPU for the graph at ``path``.

    Args:
        path (str): an .onnx file.
        threads (int, optional): intra-op threads. Default: the environment
            variable ``OMP_NUM_THREADS`` when set (as PyTorch follows it),
            else ONNX Runtime's default (one per physical core).
        profile_prefix (str, optional): turn ONNX Runtime's profiler on; it
            writes ``<profile_prefix>_<date>.json`` when profiling ends
            (``session.end_profiling()``, which returns the path; see
            :func:`end_profiling` and :func:`op_time_shares`).

    Returns:
        onnxruntime.InferenceSession: CPU provider, sequential execution,
        ``graph_optimization_level=ORT_ENABLE_ALL``.
    """
    ort = require_onnx(runtime_only=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = \
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is None and os.environ.get('OMP_NUM_THREADS', '').isdigit():
        threads = int(os.environ['OMP_NUM_THREADS'])
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(
        path, options, providers=['CPUExecutionProvider'])


@functools.lru_cache(maxsize=None)
def attention_bias_broadcasts() -> bool:
    """Whether ONNX Runtime's ``MultiHeadAttention`` applies an attention
    bias of batch 1 (CMT's position bias, one for every image) to each image
    of a batch: onnxruntime 1.20+ does, 1.19 (the newest for Python 3.8)
    gives the second image garbage. Probed once, on a tiny graph, against
    PyTorch; where it does not, :func:`run_by_image` runs a batch image by
    image."""
    from ..models.utils.attention import onnx_runtime_attention

    class Attention(nn.Module):

        def forward(self, q, k, v, bias):
            return onnx_runtime_attention(q, k, v, bias, 2, 0.5)

    g = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(shape, generator=g)
        for shape in ((2, 6, 8), (2, 3, 8), (2, 3, 8), (2, 6, 3))
    ]
    names = ['q', 'k', 'v', 'bias']
    graph = io.BytesIO()
    torch.onnx.export(
        Attention(),
        tuple(inputs),
        graph,
        input_names=names,
        opset_version=17,
        **ONNX_EXPORT_KWARGS)
    ort = require_onnx(runtime_only=True)
    got = ort.InferenceSession(
        graph.getvalue(),
        providers=['CPUExecutionProvider']).run(None, {
            n: t.numpy()
            for n, t in zip(names, inputs)
        })[0]
    expected = Attention()(*inputs).numpy()
    return bool(np.allclose(got, expected, rtol=1e-4, atol=1e-5))


def run_by_image(session, output_names, feeds: dict, shared: dict) -> list:
    """``session.run`` on a graph with CMT's attention: ``feeds`` are
    batches (their first dimension), ``shared`` serve every image (the
    position biases). One run, or one per image where ONNX Runtime applies
    a shared attention bias wrongly (:func:`attention_bias_broadcasts`):
    the same outputs."""
    batch = len(next(iter(feeds.values())))
    if batch == 1 or attention_bias_broadcasts():
        return session.run(output_names, dict(feeds, **shared))
    runs = [
        session.run(output_names,
                    dict({
                        n: f[i:i + 1]
                        for n, f in feeds.items()
                    }, **shared)) for i in range(batch)
    ]
    return [np.concatenate(outs) for outs in zip(*runs)]


class OnnxRuntimeModule(nn.Module):
    """A part of a detector run by ONNX Runtime, with the interface of the
    PyTorch module it replaces: the same positional arguments (tensors, or
    sequences of tensors such as a tuple of feature maps) and the same
    output structure, as float32 torch tensors on the inputs' device.

    Args:
        session (onnxruntime.InferenceSession): the part's graph.
        spec (dict): the part's manifest entry (names, templates).
        size_session (onnxruntime.InferenceSession, optional): the graph of
            the part's size-dependent inputs (``spec['size_inputs']``: CMT's
            position biases), run once per input size; its outputs are kept
            for the next inputs of the same size.
    """

    def __init__(self, session, spec: dict, size_session=None):
        super().__init__()
        self.session, self.spec = session, spec
        self.size_session = size_session
        self.input_names = leaf_names(spec['inputs'])
        self.output_names = leaf_names(spec['outputs'])
        self.record = False  # keep the last inputs and outputs
        self.last = None
        self._size_cache = None  # (image size, feeds)

    @classmethod
    def from_spec(cls,
                  spec: dict,
                  onnx_dir: str,
                  threads: Optional[int] = None,
                  profile_prefix: Optional[str] = None):
        """The module of a manifest entry, its sessions on the graphs in
        ``onnx_dir`` (see :func:`ort_session`; with profiling, the sessions
        write ``<profile_prefix><graph file name>_*.json``)."""

        def session(file):
            return ort_session(
                osp.join(onnx_dir, file), threads,
                f'{profile_prefix}{file[:-len(".onnx")]}'
                if profile_prefix else None)

        sized = spec.get('size_inputs')
        return cls(
            session(spec['file']), spec,
            session(sized['file']) if sized else None)

    @property
    def sessions(self) -> list:
        """The part's sessions: its graph's, then the size inputs' one."""
        return [self.session] + ([self.size_session]
                                 if self.size_session is not None else [])

    def extra_repr(self) -> str:
        return f'{self.spec["file"]!r} (ONNX Runtime)'

    def forward(self, *args):
        flat = flatten(args, self.spec['inputs'])
        feeds = {
            n: t.detach().to('cpu', torch.float32).contiguous().numpy()
            for n, t in zip(self.input_names, flat)
        }
        if self.size_session is None:
            outs = self.session.run(self.output_names, feeds)
        else:  # CMT's features: its attention takes the size's biases
            outs = run_by_image(self.session, self.output_names, feeds,
                                self.size_feeds(feeds[self.input_names[0]]))
        outs = [torch.from_numpy(o).to(flat[0].device) for o in outs]
        result = unflatten(
            dict(zip(self.output_names, outs)), self.spec['outputs'])
        if self.record:
            self.last = (args, result)
        return result

    def size_feeds(self, image) -> dict:
        """The size graph's outputs for the spatial size of ``image`` (a
        ``(B, C, H, W)`` array), by name. Those of the last size are kept:
        a COCO evaluation sees most sizes once, and the largest of them,
        CMT's stage-1 bias, takes hundreds of MB."""
        size = tuple(image.shape[2:])
        if self._size_cache is None or self._size_cache[0] != size:
            self._size_cache = None  # freed before the next one is made
            spec = self.spec['size_inputs']
            names = leaf_names(spec['outputs'])
            outs = self.size_session.run(
                names, {leaf_names(spec['inputs'])[0]: image})
            self._size_cache = (size, dict(zip(names, outs)))
        return self._size_cache[1]


def onnx_modules(model: nn.Module) -> Dict[str, OnnxRuntimeModule]:
    """The :class:`OnnxRuntimeModule` of each part of an attached model,
    by part name (their ``session`` is the ONNX Runtime session)."""
    return {
        m.spec['name']: m
        for m in model.modules() if isinstance(m, OnnxRuntimeModule)
    }


def _strip_weights(module: nn.Module) -> None:
    """Delete what holds ``module``'s weights: its parameters and buffers
    and every child module that holds any (child modules without, such as
    loss functions whose settings post-processing reads, stay)."""
    module._parameters.clear()
    module._buffers.clear()
    for name, child in list(module.named_children()):
        if any(True for _ in child.parameters()) or \
                any(True for _ in child.buffers()):
            delattr(module, name)


def _weights(model: nn.Module):
    """Named parameters and buffers outside the data preprocessor."""
    for name, tensor in list(model.named_parameters()) + list(
            model.named_buffers()):
        if not name.startswith('data_preprocessor.'):
            yield name, tensor


def attach_onnx(model: nn.Module,
                onnx_dir: str,
                threads: Optional[int] = None,
                profile_prefix: Optional[str] = None) -> nn.Module:
    """Replace the exported parts of ``model`` (an mmdet detector built from
    the exported config, no weights needed) by :class:`OnnxRuntimeModule`\\
    s running the graphs in ``onnx_dir``; in place.

    The backbone becomes the features graph and the neck is removed; each
    head keeps its settings (prior generator, box coder, test_cfg, losses'
    activation settings) for mmdet's post-processing, and its layers are
    deleted, its ``forward`` being the graph's. Afterwards the model holds
    no parameter or buffer outside its data preprocessor (checked).

    Args:
        model: the detector, built from the config the graphs were exported
            with (its ``test_cfg`` may differ: thresholds are applied by
            mmdet's Python code).
        onnx_dir (str): a folder written by :func:`export_detector`.
        threads, profile_prefix: see :func:`ort_session`; with profiling,
            each graph's session writes ``<profile_prefix><graph file
            name without .onnx>_*.json``.

    Returns:
        the model, in eval mode, with ``dataset_meta`` from the export and
        ``onnx_manifest``.

    Raises:
        UsageError: the model's structure is not the exported one.
    """
    manifest = read_manifest(onnx_dir)
    if onnx_modules(model):
        raise UsageError('this model already runs ONNX graphs; build a new '
                         'one from the config to attach others')
    specs = {spec['name']: spec for spec in manifest['parts']}
    parts = detector_parts(model)
    if [p.name for p in parts] != [s['name'] for s in manifest['parts']]:
        raise UsageError(
            f'the model has the parts {[p.name for p in parts]}, the export '
            f'in {onnx_dir!r} {list(specs)}: use the config it was exported '
            f'with ({osp.join(onnx_dir, CONFIG)})')
    for part in parts:
        spec = specs[part.name]
        digest, num_params = structure_digest(part_module(model, part))
        if digest != spec['structure_sha256']:
            raise UsageError(
                f'model.{part.paths[0]} is not the exported one (its weights '
                f'have other names or shapes: {num_params} parameters, '
                f'exported {spec["num_parameters"]}): use the config the '
                f'graphs in {onnx_dir!r} were exported with '
                f'({osp.join(onnx_dir, CONFIG)})')
    preprocessor = preprocessor_meta(model)
    for key, value in manifest['data_preprocessor'].items():
        if preprocessor.get(key) != value:
            raise UsageError(
                f'model.data_preprocessor.{key} is {preprocessor.get(key)}, '
                f'exported with {value}: use the config the graphs in '
                f'{onnx_dir!r} were exported with '
                f'({osp.join(onnx_dir, CONFIG)})')

    for part in parts:
        spec = specs[part.name]
        runner = OnnxRuntimeModule.from_spec(spec, onnx_dir, threads,
                                             profile_prefix)
        if part.role == 'features':
            model.backbone = runner
            if len(part.paths) > 1:
                model.neck = None  # with_neck is False: backbone gives maps
        else:
            head = model.get_submodule(part.paths[0])
            _strip_weights(head)
            head.onnx_runtime = runner
            head.forward = runner.forward  # also for head.forward(x) calls
    leftover = [name for name, _ in _weights(model)]
    if leftover:
        raise RuntimeError(f'weights left in PyTorch after attaching the '
                           f'ONNX graphs: {leftover[:5]}')
    model.eval()
    if manifest.get('dataset_meta'):
        model.dataset_meta = dataset_meta(manifest['dataset_meta'])
    model.onnx_manifest = manifest
    return model


def load_onnx_detector(onnx_dir: str,
                       cfg=None,
                       threads: Optional[int] = None,
                       profile_prefix: Optional[str] = None) -> nn.Module:
    """Build the detector from ``cfg`` (default: the config saved with the
    export) without weights and :func:`attach_onnx` the graphs in
    ``onnx_dir``. The model's ``cfg`` is set, as mmdet's ``init_detector``
    does, so ``mmdet.apis.inference_detector`` works with it.

    Returns:
        the detector (eval mode, CPU), its exported parts run by ONNX
        Runtime.
    """
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    read_manifest(onnx_dir)  # the clear errors first
    if cfg is None:
        cfg = Config.fromfile(osp.join(onnx_dir, CONFIG))
    cfg = copy.deepcopy(cfg)
    if 'init_cfg' in cfg.model.get('backbone', {}):
        cfg.model.backbone.init_cfg = None
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    attach_onnx(model, onnx_dir, threads, profile_prefix)
    if not hasattr(model, 'dataset_meta'):
        from mmdet.evaluation import get_classes
        model.dataset_meta = {
            'classes': get_classes('coco'),
            'palette': 'random'
        }
    model.cfg = cfg
    return model
