"""Deploy an MMDetection detector to ONNX Runtime: the networks in ONNX,
everything around them in mmdet's own Python code.

:func:`export_detector` writes the tensor graphs of a detector's parts, each
with the interface of the module it replaces, traced by the TorchScript
exporter (``torch.onnx.export(..., dynamo=False)``) with dynamic batch, height
and width (dynamic number of RoIs for the RoI heads)::

    features.onnx            backbone + neck: image (B, 3, H, W) -> feat0..
    bbox_head.onnx           single-stage: feat0.. -> cls_score_l, bbox_pred_l
    rpn_head.onnx            two-stage: the RPN head, the same way
    roi_head.bbox_head.onnx  RoI features (N, C, 7, 7) -> cls_score (N, K+1),
                             bbox_pred
    roi_head.mask_head.onnx  RoI features (N, C, 14, 14) -> mask logits
                             (N, K, 28, 28)
    manifest.json            parts, input/output names, traced shapes, checks
    config.py                the detector's config, dumped

(a cascade has one RoI head per stage: ``roi_head.bbox_head.0.onnx``, ...).

:func:`attach_onnx` takes a detector built from the config (structure only,
no weights loaded) and replaces those parts by :class:`OnnxRuntimeModule`\\ s
(torch tensors in and out): their weighted layers are deleted, so no random
PyTorch weight can be used silently. mmdet's own code does the rest: data
preprocessing, RPN proposals, RoIAlign feature extraction (mmcv's op),
``predict_by_feat`` (box decoding, score threshold, NMS, rescaling), mask
pasting; ``test_step``, mmdet's test loop and evaluators and
``inference_detector`` work unchanged. :func:`load_onnx_detector` does both
(build, attach).

For benchmarks: :func:`ort_session` (CPU provider, all graph optimisations,
optional thread count and profiling), :func:`end_profiling` and
:func:`op_time_shares` (time share of each operator type in ONNX Runtime's
profile).

onnx and onnxruntime are optional (``pip install -e .[export]``); they are
imported when needed.
"""
import copy
import hashlib
import json
import os
import os.path as osp
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .compat import ONNX_EXPORT_KWARGS
from .engine import UsageError

MANIFEST = 'manifest.json'
CONFIG = 'config.py'
FORMAT = 'mmcmt-onnx-detector/1'
OPSET = 17

#: Names of the dense heads' output groups (then ``out2``, ``out3``, ...).
DENSE_OUTPUTS = ('cls_score', 'bbox_pred')

#: :func:`op_time_shares` with ``grouped=True``: ONNX Runtime's fused
#: kernels under the operation they compute.
OP_GROUPS = {
    'Erf': 'Gelu',
    'Gelu': 'Gelu',
    'BiasGelu': 'Gelu',
    'FastGelu': 'Gelu',
    'FusedConv': 'Conv',
    'NhwcFusedConv': 'Conv',
    'QLinearConv': 'Conv',
    'FusedMatMul': 'MatMul',
    'Gemm': 'MatMul',
    'FusedGemm': 'MatMul',
    'SkipLayerNormalization': 'LayerNormalization',
    'SimplifiedLayerNormalization': 'LayerNormalization',
    'SkipSimplifiedLayerNormalization': 'LayerNormalization',
    # torch exports GroupNorm as InstanceNormalization below opset 18
    'InstanceNormalization': 'GroupNorm',
    'GroupNorm': 'GroupNorm',
}


class MissingExtrasError(UsageError):
    """onnx or onnxruntime is not installed."""


def require_onnx(runtime_only: bool = False):
    """Import onnxruntime (and onnx unless ``runtime_only``), or fail with
    one line saying how to install them. Returns the onnxruntime module."""
    try:
        if not runtime_only:
            import onnx  # noqa: F401
        import onnxruntime
    except ImportError as error:
        raise MissingExtrasError(
            f'ONNX deployment needs onnx and onnxruntime ({error}); install '
            f'them with: pip install -e .[export]') from None
    return onnxruntime


# --------------------------------------------------------------------------
# The parts of a detector


class Part:
    """One exported graph: ``name`` (also its file name, ``name.onnx``), the
    dotted ``paths`` of the modules it replaces in the detector (the first
    one runs it; the others, the neck, are removed) and its role:
    ``features`` (image -> neck maps), ``dense`` (a dense head: maps ->
    per-level outputs) or ``roi`` (an RoI head: RoI features -> outputs, a
    dynamic number of RoIs)."""

    def __init__(self, name: str, paths: Sequence[str], role: str):
        self.name, self.paths, self.role = name, list(paths), role

    def __repr__(self):
        return f'Part({self.name!r}, {self.paths}, {self.role!r})'


def detector_parts(model: nn.Module) -> List[Part]:
    """The parts of an mmdet detector that :func:`export_detector` exports:
    backbone + neck, then the dense head of a single-stage detector, or the
    RPN head and the RoI head's bbox and mask heads (each stage's, for a
    cascade) of a two-stage one.

    Raises:
        UsageError: a detector of another kind (DETR-like, HTC, shared RoI
            heads), which this module does not handle.
    """
    from mmdet.models.detectors import SingleStageDetector, TwoStageDetector
    paths = ['backbone'
             ] + (['neck'] if getattr(model, 'with_neck', False) else [])
    parts = [Part('features', paths, 'features')]
    if isinstance(model, SingleStageDetector):
        return parts + [Part('bbox_head', ['bbox_head'], 'dense')]
    if not isinstance(model, TwoStageDetector) or \
            type(model.roi_head).__name__ not in ('StandardRoIHead',
                                                  'CascadeRoIHead'):
        raise UsageError(
            f'{type(model).__name__}: ONNX deployment handles single-stage '
            f'detectors and two-stage ones with a standard or cascade RoI '
            f'head')
    roi_head = model.roi_head
    if getattr(roi_head, 'with_shared_head', False):
        raise UsageError('ONNX deployment does not handle RoI heads with a '
                         'shared head')
    if model.with_rpn:
        parts.append(Part('rpn_head', ['rpn_head'], 'dense'))
    for head in ('bbox_head', 'mask_head'):
        module = getattr(roi_head, head, None)
        if module is None:
            continue
        names = ([f'roi_head.{head}.{i}' for i in range(len(module))] if
                 isinstance(module, nn.ModuleList) else [f'roi_head.{head}'])
        parts += [Part(name, [name], 'roi') for name in names]
    return parts


class _Features(nn.Module):
    """Backbone and neck as one module: ``(B, 3, H, W)`` -> tuple of maps."""

    def __init__(self, backbone: nn.Module, neck: Optional[nn.Module]):
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.backbone(image)
        return tuple(self.neck(x) if self.neck is not None else x)


def _module(model: nn.Module, part: Part) -> nn.Module:
    """The PyTorch module that computes ``part`` in ``model``."""
    if part.role == 'features':
        return _Features(
            model.get_submodule(part.paths[0]),
            model.get_submodule(part.paths[1])
            if len(part.paths) > 1 else None)
    return model.get_submodule(part.paths[0])


def _structure_digest(module: nn.Module) -> Tuple[str, int]:
    """sha256 of the names and shapes of ``module``'s parameters and
    buffers (as built from the config: the structure, not the values) and
    its number of parameter elements."""
    items = sorted((k, tuple(v.shape)) for k, v in module.state_dict().items())
    digest = hashlib.sha256(repr(items).encode()).hexdigest()
    return digest, sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------
# Nested structures <-> flat lists of named tensors


def _template(value, names):
    """The names template of a (nested) tuple/list of tensors: a name for a
    tensor, a list for a sequence. ``names(path)`` names the tensor at index
    path ``path`` (a tuple)."""

    def walk(v, path):
        if isinstance(v, torch.Tensor):
            return names(path)
        if isinstance(v, (tuple, list)):
            return [walk(x, path + (i, )) for i, x in enumerate(v)]
        raise TypeError(f'cannot export an output of type {type(v).__name__}')

    return walk(value, ())


def _flatten(value, template) -> List:
    if isinstance(template, str):
        return [value]
    if len(value) != len(template):
        raise ValueError(f'expected {len(template)} tensors '
                         f'({_names(template)}), got {len(value)}')
    return [t for v, s in zip(value, template) for t in _flatten(v, s)]


def _names(template) -> List[str]:
    if isinstance(template, str):
        return [template]
    return [n for t in template for n in _names(t)]


def _unflatten(values: Dict[str, object], template, top=True):
    """Rebuild the structure: the top level as a tuple, inner ones as
    lists (as mmdet's heads return them)."""
    if isinstance(template, str):
        return values[template]
    items = [_unflatten(values, t, False) for t in template]
    return tuple(items) if top else items


def _dense_name(path):
    group, level = path
    base = DENSE_OUTPUTS[group] if group < len(DENSE_OUTPUTS) else \
        f'out{group}'
    return f'{base}_{level}'


def _output_names(role: str, outputs):
    if role == 'features':
        return _template(outputs, lambda p: f'feat{p[0]}')
    if role == 'dense' and all(isinstance(o, (tuple, list)) for o in outputs):
        return _template(outputs, _dense_name)
    if role == 'roi' and isinstance(outputs, (tuple, list)) and \
            len(outputs) == 2:
        return _template(outputs, lambda p: ('cls_score', 'bbox_pred')[p[0]])
    if role == 'roi' and isinstance(outputs, torch.Tensor):
        return 'mask_preds'
    return _template(outputs, lambda p: 'out' + '_'.join(map(str, p)))


def _input_names(role: str, args):
    if role == 'features':
        return ['image']
    if role == 'dense':
        return _template(args, lambda p: f'feat{p[-1]}')
    return _template(
        args, lambda p: 'roi_feats'
        if p == (0, ) else 'in' + '_'.join(map(str, p)))


class _Flat(nn.Module):
    """``module`` with flat tensor inputs and outputs, for the exporter."""

    def __init__(self, module: nn.Module, in_template, out_template):
        super().__init__()
        self.module = module
        self.in_template, self.out_template = in_template, out_template

    def forward(self, *flat):
        values = dict(zip(_names(self.in_template), flat))
        args = _unflatten(values, self.in_template)
        return tuple(_flatten(self.module(*args), self.out_template))


def _dynamic_axes(role: str, name: str, ndim: int) -> Dict[int, str]:
    if role == 'roi':
        return {0: 'num_rois'}
    if ndim == 4:
        return {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'}
    return {0: 'batch'}


# --------------------------------------------------------------------------
# Export


def dummy_data_samples(inputs: torch.Tensor) -> list:
    """mmdet data samples for a batch ``inputs`` ``(B, 3, H, W)`` that is
    the images themselves (no resizing, no padding): what a two-stage
    detector's ``_forward`` needs."""
    from mmdet.structures import DetDataSample
    height, width = inputs.shape[-2:]
    meta = dict(
        img_shape=(height, width),
        ori_shape=(height, width),
        pad_shape=(height, width),
        batch_input_shape=(height, width),
        scale_factor=(1.0, 1.0))
    return [DetDataSample(metainfo=meta) for _ in range(len(inputs))]


def capture_part_inputs(model: nn.Module,
                        parts: List[Part],
                        inputs: torch.Tensor,
                        data_samples=None) -> Dict:
    """Run ``model._forward`` (networks only, no post-processing) on
    ``inputs`` ``(B, 3, H, W)`` and return, for each part name, the
    positional arguments of its module's first call (for a dense head:
    ``(feature maps, )``; for an RoI head: ``(RoI features, )``)."""
    captured = {}
    patched = []
    for part in parts:
        module = model.get_submodule(part.paths[0])
        original = module.forward  # heads are also called as .forward(x)

        def hook(*args, _name=part.name, _original=original, **kwargs):
            captured.setdefault(_name, args)
            return _original(*args, **kwargs)

        module.forward = hook
        patched.append(module)
    try:
        with torch.no_grad():
            model._forward(
                inputs, data_samples
                if data_samples is not None else dummy_data_samples(inputs))
    finally:
        for module in patched:
            del module.forward  # back to the class's method
    missing = [p.name for p in parts if p.name not in captured]
    if missing:
        raise RuntimeError(f'{missing} did not run in the forward pass')
    return captured


def _json(value):
    """``value`` with tuples as lists, numbers and strings kept (for
    dataset meta)."""
    return json.loads(json.dumps(value, default=str))


def _preprocessor_meta(model: nn.Module) -> dict:
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


def export_detector(model: nn.Module,
                    cfg,
                    out_dir: str,
                    shape: Sequence[int] = (800, 1216),
                    opset: int = OPSET,
                    meta: Optional[dict] = None) -> dict:
    """Export the parts of ``model`` (see :func:`detector_parts`) to
    ``out_dir``, with a manifest and the config.

    ``model`` itself is left as it is: a copy is put in eval mode and its
    backbone's BatchNorms are folded (``backbone.fuse()``, when the backbone
    has one, as CMT does). The graphs are traced on a random image
    ``(1, 3, *shape)`` through ``model._forward`` (the RPN's proposals give
    the RoI heads their example inputs); every graph is then run by ONNX
    Runtime on its traced inputs and its largest absolute error against
    PyTorch is written to the manifest.

    Args:
        model: an mmdet detector with its weights.
        cfg (Config): the config ``model`` was built from (dumped to
            ``out_dir/config.py``; the structure check of
            :func:`attach_onnx` builds it again).
        out_dir (str): a folder that does not exist or is empty.
        shape (tuple[int, int]): traced image height and width.
        opset (int): ONNX opset. Defaults to 17.
        meta (dict, optional): more entries for the manifest (say, the
            source config and checkpoint paths).

    Returns:
        dict: the manifest (also written to ``out_dir/manifest.json``).

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty.
    """
    require_onnx()
    if osp.isdir(out_dir) and os.listdir(out_dir) or osp.isfile(out_dir):
        raise FileExistsError(f'{out_dir} exists and is not empty; '
                              f'choose a new folder (nothing is overwritten)')
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    fresh = MODELS.build(copy.deepcopy(cfg.model))  # structure as built
    parts = detector_parts(fresh)

    model = copy.deepcopy(model).cpu().eval()
    if hasattr(model.backbone, 'fuse'):
        model.backbone.fuse()
    image = torch.randn(1, 3, *shape)
    examples = capture_part_inputs(model, parts, image)
    examples['features'] = (image, )

    created = not osp.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        return _export_parts(model, fresh, parts, examples, cfg, out_dir,
                             shape, opset, meta)
    except BaseException:
        # leave no partial export behind (out_dir was new or empty)
        for name in os.listdir(out_dir):
            os.remove(osp.join(out_dir, name))
        if created:
            os.rmdir(out_dir)
        raise


def _export_parts(model, fresh, parts, examples, cfg, out_dir, shape, opset,
                  meta) -> dict:
    manifest = dict(
        format=FORMAT,
        detector=type(model).__name__,
        config=CONFIG,
        traced_shape=[1, 3, *shape],
        opset=opset,
        exporter='torch.onnx.export (TorchScript)',
        versions=_versions(),
        dataset_meta=_json(getattr(model, 'dataset_meta', None)),
        data_preprocessor=_preprocessor_meta(model),
        parts=[])
    manifest.update(meta or {})
    for part in parts:
        manifest['parts'].append(
            _export_part(
                _module(model, part), part, examples[part.name],
                _module(fresh, part), out_dir, opset))
    cfg.dump(osp.join(out_dir, CONFIG))
    with open(osp.join(out_dir, MANIFEST), 'w') as f:
        f.write(_dumps(manifest) + '\n')
    return manifest


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


def _versions() -> dict:
    import mmdet
    import onnx
    import onnxruntime
    return dict(
        torch=torch.__version__,
        mmdet=mmdet.__version__,
        onnx=onnx.__version__,
        onnxruntime=onnxruntime.__version__)


def _export_part(module: nn.Module, part: Part, args: tuple, fresh: nn.Module,
                 out_dir: str, opset: int) -> dict:
    """Export one part traced on ``args`` and check it in ONNX Runtime."""
    with torch.no_grad():
        outputs = module(*args)
    in_template = _input_names(part.role, args)
    out_template = _output_names(part.role, outputs)
    flat_in = _flatten(args, in_template)
    flat_out = _flatten(outputs, out_template)
    in_names, out_names = _names(in_template), _names(out_template)
    dynamic = {
        n: _dynamic_axes(part.role, n, t.dim())
        for n, t in zip(in_names + out_names, flat_in + flat_out)
    }
    path = osp.join(out_dir, f'{part.name}.onnx')
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tracer and deprecation chatter
        # The TorchScript exporter traces the size arithmetic (CMT's
        # padding and bias resizing, FPN's upsampling to the previous
        # level's size) into the graph; docs/user_guides/deploy.md says
        # why not the dynamo exporter.
        torch.onnx.export(
            _Flat(module, in_template, out_template).eval(),
            tuple(flat_in),
            path,
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=dynamic,
            opset_version=opset,
            **ONNX_EXPORT_KWARGS)
    session = ort_session(path)
    got = session.run(out_names, {
        n: t.numpy()
        for n, t in zip(in_names, flat_in)
    })
    error = max(
        float((torch.from_numpy(g) - e).abs().max())
        for g, e in zip(got, flat_out))
    digest, num_params = _structure_digest(fresh)
    return dict(
        name=part.name,
        file=f'{part.name}.onnx',
        replaces=part.paths,
        role=part.role,
        inputs=in_template,
        outputs=out_template,
        input_shapes={
            n: list(t.shape)
            for n, t in zip(in_names, flat_in)
        },
        output_shapes={
            n: list(t.shape)
            for n, t in zip(out_names, flat_out)
        },
        dynamic_axes={
            n: {
                str(k): v
                for k, v in d.items()
            }
            for n, d in dynamic.items()
        },
        max_abs_error_at_trace=error,
        structure_sha256=digest,
        num_parameters=num_params)


# --------------------------------------------------------------------------
# ONNX Runtime


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


class OnnxRuntimeModule(nn.Module):
    """A part of a detector run by ONNX Runtime, with the interface of the
    PyTorch module it replaces: the same positional arguments (tensors, or
    sequences of tensors such as a tuple of feature maps) and the same
    output structure, as float32 torch tensors on the inputs' device.

    Args:
        session (onnxruntime.InferenceSession): the part's graph.
        spec (dict): the part's manifest entry (names, templates).
    """

    def __init__(self, session, spec: dict):
        super().__init__()
        self.session, self.spec = session, spec
        self.input_names = _names(spec['inputs'])
        self.output_names = _names(spec['outputs'])
        self.record = False  # keep the last inputs and outputs
        self.last = None

    def extra_repr(self) -> str:
        return f'{self.spec["file"]!r} (ONNX Runtime)'

    def forward(self, *args):
        flat = _flatten(args, self.spec['inputs'])
        feeds = {
            n: t.detach().to('cpu', torch.float32).contiguous().numpy()
            for n, t in zip(self.input_names, flat)
        }
        outs = [
            torch.from_numpy(o).to(flat[0].device)
            for o in self.session.run(self.output_names, feeds)
        ]
        result = _unflatten(
            dict(zip(self.output_names, outs)), self.spec['outputs'])
        if self.record:
            self.last = (args, result)
        return result


def read_manifest(onnx_dir: str) -> dict:
    """The manifest of an export by :func:`export_detector`.

    Raises:
        FileNotFoundError: no such folder, or no manifest or graph in it.
        UsageError: a manifest of another format.
    """
    if not osp.isdir(onnx_dir):
        raise FileNotFoundError(
            f'ONNX export not found: {onnx_dir!r} is not a folder (write '
            f'one with tools/deploy_onnx.py CONFIG CHECKPOINT {onnx_dir})')
    path = osp.join(onnx_dir, MANIFEST)
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{onnx_dir!r} has no {MANIFEST}: not an export of '
            f'tools/deploy_onnx.py (write one with tools/deploy_onnx.py '
            f'CONFIG CHECKPOINT NEW_DIR)')
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get('format') != FORMAT:
        raise UsageError(f'{path}: format {manifest.get("format")!r}, '
                         f'expected {FORMAT!r}')
    for spec in manifest['parts']:
        if not osp.isfile(osp.join(onnx_dir, spec['file'])):
            raise FileNotFoundError(
                f'{onnx_dir!r}: {spec["file"]} is missing (export again '
                f'with tools/deploy_onnx.py)')
    return manifest


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
            each part's session writes ``<profile_prefix><part name>_*.json``.

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
        digest, num_params = _structure_digest(_module(model, part))
        if digest != spec['structure_sha256']:
            raise UsageError(
                f'model.{part.paths[0]} is not the exported one (its weights '
                f'have other names or shapes: {num_params} parameters, '
                f'exported {spec["num_parameters"]}): use the config the '
                f'graphs in {onnx_dir!r} were exported with '
                f'({osp.join(onnx_dir, CONFIG)})')
    preprocessor = _preprocessor_meta(model)
    for key, value in manifest['data_preprocessor'].items():
        if preprocessor.get(key) != value:
            raise UsageError(
                f'model.data_preprocessor.{key} is {preprocessor.get(key)}, '
                f'exported with {value}: use the config the graphs in '
                f'{onnx_dir!r} were exported with '
                f'({osp.join(onnx_dir, CONFIG)})')

    for part in parts:
        spec = specs[part.name]
        session = ort_session(
            osp.join(onnx_dir, spec['file']), threads,
            f'{profile_prefix}{part.name}' if profile_prefix else None)
        runner = OnnxRuntimeModule(session, spec)
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
        model.dataset_meta = _dataset_meta(manifest['dataset_meta'])
    model.onnx_manifest = manifest
    return model


def _weights(model: nn.Module):
    """Named parameters and buffers outside the data preprocessor."""
    for name, tensor in list(model.named_parameters()) + list(
            model.named_buffers()):
        if not name.startswith('data_preprocessor.'):
            yield name, tensor


def _dataset_meta(meta: dict) -> dict:
    """The manifest's dataset meta as mmdet keeps it (palette colours as
    tuples)."""
    meta = dict(meta)
    if isinstance(meta.get('palette'), list):
        meta['palette'] = [
            tuple(c) if isinstance(c, list) else c for c in meta['palette']
        ]
    return meta


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


def onnx_modules(model: nn.Module) -> Dict[str, OnnxRuntimeModule]:
    """The :class:`OnnxRuntimeModule` of each part of an attached model,
    by part name (their ``session`` is the ONNX Runtime session)."""
    return {
        m.spec['name']: m
        for m in model.modules() if isinstance(m, OnnxRuntimeModule)
    }


def end_profiling(model: nn.Module) -> List[str]:
    """End the profiling of every session of a model attached with a
    ``profile_prefix``; returns the profile files written."""
    return [m.session.end_profiling() for m in onnx_modules(model).values()]


def op_time_shares(profile_path: Union[str, Iterable[str]],
                   grouped: bool = False) -> Dict[str, float]:
    """Share of the kernel time of each operator type in ONNX Runtime
    profiles.

    Args:
        profile_path (str | list[str]): a profile JSON written by a session
            with profiling on (:func:`ort_session` ``profile_prefix``), or
            several (say, :func:`end_profiling`'s): their times add up.
        grouped (bool): merge ONNX Runtime's fused kernels into the
            operation they compute (:data:`OP_GROUPS`: ``FusedConv`` ->
            ``Conv``, ``Erf``/``BiasGelu`` -> ``Gelu``, ``FusedMatMul``/
            ``Gemm`` -> ``MatMul``, ``SkipLayerNormalization`` ->
            ``LayerNormalization``, ...). Default: the kernels' own op
            types, as ONNX Runtime ran them after its graph optimisations.

    Returns:
        dict[str, float]: op type -> fraction of the summed kernel time of
        all nodes (``Node`` events ``*_kernel_time``), largest first; the
        fractions add up to 1.
    """
    paths = [profile_path] if isinstance(profile_path, str) else \
        list(profile_path)
    times: Dict[str, float] = {}
    for path in paths:
        with open(path) as f:
            events = json.load(f)
        for event in events:
            if event.get('cat') != 'Node' or \
                    not event.get('name', '').endswith('_kernel_time'):
                continue
            op = event.get('args', {}).get('op_name', 'unknown')
            if grouped:
                op = OP_GROUPS.get(op, op)
            times[op] = times.get(op, 0.) + float(event.get('dur', 0))
    total = sum(times.values())
    if not total:
        raise ValueError(f'no node timings in {paths} (was the session run '
                         f'with profiling on?)')
    return {
        op: t / total
        for op, t in sorted(times.items(), key=lambda item: -item[1])
    }


# --------------------------------------------------------------------------
# Checks against PyTorch


def compare_parts(torch_model: nn.Module,
                  onnx_model: nn.Module,
                  inputs: torch.Tensor,
                  data_samples=None) -> Dict[str, dict]:
    """Run the networks of ``onnx_model`` (``_forward``: no
    post-processing) on ``inputs`` ``(B, 3, H, W)``, then each PyTorch part
    of ``torch_model`` on the same inputs as its ONNX counterpart got.

    Returns:
        dict: part name -> ``{'max_abs': float, 'max_rel': float}``, the
        largest absolute error over the part's outputs (inf if a shape
        differs) and that divided by the largest absolute PyTorch output.
    """
    modules = onnx_modules(onnx_model)
    parts = {p.name: p for p in detector_parts(torch_model)}
    for module in modules.values():
        module.record, module.last = True, None
    try:
        with torch.no_grad():
            onnx_model._forward(
                inputs, data_samples
                if data_samples is not None else dummy_data_samples(inputs))
    finally:
        for module in modules.values():
            module.record = False
    errors = {}
    for name, module in modules.items():
        if module.last is None:
            continue
        args, got = module.last
        with torch.no_grad():
            expected = _module(torch_model, parts[name])(*args)
        template = module.spec['outputs']
        got, expected = _flatten(got, template), _flatten(expected, template)
        max_abs = max(
            float((g - e).abs().max()) if g.shape == e.shape else float('inf')
            for g, e in zip(got, expected))
        scale = max(float(e.abs().max()) for e in expected)
        errors[name] = dict(
            max_abs=max_abs, max_rel=max_abs / max(scale, 1e-12))
    return errors


def match_detections(a, b, iou_thr: float = 0.99) -> dict:
    """Match two detectors' results on one image (mmdet ``InstanceData``
    with ``bboxes`` ``(N, 4)``, ``scores``, ``labels``): each box of ``a``,
    best score first, takes the unmatched box of ``b`` with the same label
    and the largest IoU, if that IoU is above ``iou_thr``.

    Returns:
        dict: ``count_a``, ``count_b``, ``matched`` (pairs), ``min_iou``
        (of the pairs, 1.0 if none) and ``max_score_diff`` (of the pairs).
    """
    from mmdet.structures.bbox import bbox_overlaps
    ious = bbox_overlaps(a.bboxes.float(), b.bboxes.float()) \
        if len(a) and len(b) else torch.zeros(len(a), len(b))
    taken = torch.zeros(len(b), dtype=torch.bool)
    pairs = []
    for i in torch.argsort(a.scores, descending=True).tolist():
        candidates = (b.labels == a.labels[i]) & ~taken
        if not candidates.any():
            continue
        iou = torch.where(candidates, ious[i], torch.tensor(-1.))
        j = int(iou.argmax())
        if iou[j] > iou_thr:
            taken[j] = True
            pairs.append((i, j, float(iou[j])))
    return dict(
        count_a=len(a),
        count_b=len(b),
        matched=len(pairs),
        min_iou=min((p[2] for p in pairs), default=1.0),
        max_score_diff=max(
            (abs(float(a.scores[i] - b.scores[j])) for i, j, _ in pairs),
            default=0.0))
