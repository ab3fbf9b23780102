"""Checks of a deployed detector against PyTorch: each part's outputs on
the same inputs, and the detections of both on one image."""
from typing import Dict

import torch
import torch.nn as nn

from ..utils import dummy_data_samples
from .parts import detector_parts, flatten, part_module
from .runtime import onnx_modules


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
                inputs, data_samples if data_samples is not None else
                dummy_data_samples('mmdet', *inputs.shape[-2:], len(inputs)))
    finally:
        for module in modules.values():
            module.record = False
    errors = {}
    for name, module in modules.items():
        if module.last is None:
            continue
        args, got = module.last
        with torch.no_grad():
            expected = part_module(torch_model, parts[name])(*args)
        template = module.spec['outputs']
        got, expected = flatten(got, template), flatten(expected, template)
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
