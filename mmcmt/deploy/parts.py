"""A detector's exportable parts: which modules they are, the inputs they
get in a forward pass, and their nested inputs and outputs as flat lists of
named tensors (ONNX graphs take and give flat, named tensors)."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..engine import UsageError
from ..utils import dummy_data_samples

#: Names of the dense heads' output groups (then ``out2``, ``out3``, ...).
DENSE_OUTPUTS = ('cls_score', 'bbox_pred')


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
            heads), which this package does not handle.
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


class Features(nn.Module):
    """Backbone and neck as one module: ``(B, 3, H, W)`` -> tuple of maps.

    A backbone with inputs that depend on the image size only (CMT's
    ``position_biases``, see :func:`size_inputs`) gets them as further
    arguments: the deployed graph takes them as inputs, computed once per
    size by the :class:`SizeInputs` graph."""

    def __init__(self, backbone: nn.Module, neck: Optional[nn.Module]):
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, image: torch.Tensor, *size_inputs:
                torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.backbone(image, size_inputs) if size_inputs else \
            self.backbone(image)
        return tuple(self.neck(x) if self.neck is not None else x)


def size_inputs(backbone: nn.Module):
    """The backbone's method that computes its size-dependent inputs from
    an image (``backbone.position_biases``), or None."""
    return getattr(backbone, 'position_biases', None)


class SizeInputs(nn.Module):
    """The backbone's size-dependent inputs: ``(B, 3, H, W)`` (only its
    size is read) -> tuple of tensors."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(size_inputs(self.backbone)(image))


def part_module(model: nn.Module, part: Part) -> nn.Module:
    """The PyTorch module that computes ``part`` in ``model``."""
    if part.role == 'features':
        return Features(
            model.get_submodule(part.paths[0]),
            model.get_submodule(part.paths[1])
            if len(part.paths) > 1 else None)
    return model.get_submodule(part.paths[0])


def capture_part_inputs(model: nn.Module,
                        parts: List[Part],
                        inputs: torch.Tensor,
                        data_samples=None) -> Dict:
    """Run ``model._forward`` (networks only, no post-processing) on
    ``inputs`` ``(B, 3, H, W)`` and return, for each part name, the
    positional arguments of its module's first call (for a dense head:
    ``(feature maps, )``; for an RoI head: ``(RoI features, )``).

    ``data_samples`` default to the images themselves (no resizing, no
    padding): what a two-stage detector's ``_forward`` needs."""
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
                inputs, data_samples if data_samples is not None else
                dummy_data_samples('mmdet', *inputs.shape[-2:], len(inputs)))
    finally:
        for module in patched:
            del module.forward  # back to the class's method
    missing = [p.name for p in parts if p.name not in captured]
    if missing:
        raise RuntimeError(f'{missing} did not run in the forward pass')
    return captured


# --------------------------------------------------------------------------
# Nested structures <-> flat lists of named tensors


def name_template(value, names):
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


def flatten(value, template) -> List:
    """The tensors of ``value`` in the order of ``template``'s names."""
    if isinstance(template, str):
        return [value]
    if len(value) != len(template):
        raise ValueError(f'expected {len(template)} tensors '
                         f'({leaf_names(template)}), got {len(value)}')
    return [t for v, s in zip(value, template) for t in flatten(v, s)]


def leaf_names(template) -> List[str]:
    """The names of a template, in order."""
    if isinstance(template, str):
        return [template]
    return [n for t in template for n in leaf_names(t)]


def unflatten(values: Dict[str, object], template, top=True):
    """Rebuild the structure: the top level as a tuple, inner ones as
    lists (as mmdet's heads return them)."""
    if isinstance(template, str):
        return values[template]
    items = [unflatten(values, t, False) for t in template]
    return tuple(items) if top else items


def _dense_name(path):
    group, level = path
    base = DENSE_OUTPUTS[group] if group < len(DENSE_OUTPUTS) else \
        f'out{group}'
    return f'{base}_{level}'


def output_names(role: str, outputs):
    """The names template of a part's outputs: ``feat<level>``,
    ``cls_score_<level>``/``bbox_pred_<level>``, ``cls_score``/
    ``bbox_pred`` or ``mask_preds``, else ``out<index path>``."""
    if role == 'features':
        return name_template(outputs, lambda p: f'feat{p[0]}')
    if role == 'dense' and all(isinstance(o, (tuple, list)) for o in outputs):
        return name_template(outputs, _dense_name)
    if role == 'roi' and isinstance(outputs, (tuple, list)) and \
            len(outputs) == 2:
        return name_template(outputs, lambda p:
                             ('cls_score', 'bbox_pred')[p[0]])
    if role == 'roi' and isinstance(outputs, torch.Tensor):
        return 'mask_preds'
    return name_template(outputs, lambda p: 'out' + '_'.join(map(str, p)))


def input_names(role: str, args):
    """The names template of a part's positional arguments: ``image``,
    ``feat<level>`` or ``roi_feats``."""
    if role == 'features':
        return ['image']
    if role == 'dense':
        return name_template(args, lambda p: f'feat{p[-1]}')
    return name_template(
        args, lambda p: 'roi_feats'
        if p == (0, ) else 'in' + '_'.join(map(str, p)))
