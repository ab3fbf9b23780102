"""Deploy an MMDetection detector to ONNX Runtime: the networks in ONNX,
everything around them in mmdet's own Python code.

:func:`export_detector` writes the tensor graphs of a detector's parts, each
with the interface of the module it replaces, traced by the TorchScript
exporter (``torch.onnx.export(..., dynamo=False)``) with dynamic batch, height
and width (dynamic number of RoIs for the RoI heads)::

    features.onnx            backbone + neck: image (B, 3, H, W) -> feat0..
    features.size_inputs.onnx  a CMT backbone's position biases for the
                             image's size, inputs of features.onnx that the
                             runtime computes once per size
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
imported when needed (:func:`require_onnx`).

:func:`export_backbone` writes a CMT backbone alone as one graph
(``tools/export_backbone_onnx.py``, ``python -m mmcmt.check``),
:func:`run_backbone` runs it and :func:`check_backbone` compares it with
PyTorch.

The modules, by concern: ``backbone`` (a backbone alone), ``parts`` (a
detector's exportable parts, their inputs, their nested inputs and outputs
as flat named tensors), ``export`` (tracing and checking the graphs),
``manifest`` (the export folder's format and what it records to check a
model against), ``runtime`` (sessions, the modules that run the graphs
inside mmdet), ``profiling``, ``compare`` (the checks against PyTorch) and
``extras`` (the optional packages).
"""
from .backbone import check_backbone, export_backbone, run_backbone
from .compare import compare_parts, match_detections
from .export import OPSET, export_detector
from .extras import MissingExtrasError, require_onnx
from .manifest import CONFIG, FORMAT, MANIFEST, graph_files, read_manifest
from .parts import DENSE_OUTPUTS, Part, capture_part_inputs, detector_parts
from .profiling import OP_GROUPS, end_profiling, op_time_shares
from .runtime import (OnnxRuntimeModule, attach_onnx, load_onnx_detector,
                      onnx_modules, ort_session)

__all__ = [
    'CONFIG', 'DENSE_OUTPUTS', 'FORMAT', 'MANIFEST', 'MissingExtrasError',
    'OPSET', 'OP_GROUPS', 'OnnxRuntimeModule', 'Part', 'attach_onnx',
    'capture_part_inputs', 'check_backbone', 'compare_parts', 'detector_parts',
    'end_profiling', 'export_backbone', 'export_detector', 'graph_files',
    'load_onnx_detector', 'match_detections', 'onnx_modules', 'op_time_shares',
    'ort_session', 'read_manifest', 'require_onnx', 'run_backbone'
]
