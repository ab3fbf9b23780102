"""Exporting a detector: each part traced to an ONNX graph with dynamic
sizes and checked in ONNX Runtime, then the manifest and the config, into
a new folder."""
import copy
import os
import os.path as osp
import warnings
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn

from ..compat import ONNX_EXPORT_KWARGS
from ..utils import check_new_folder
from .extras import require_onnx
from .manifest import (CONFIG, FORMAT, preprocessor_meta, structure_digest,
                       to_json, write_manifest)
from .parts import (Part, capture_part_inputs, detector_parts, flatten,
                    input_names, leaf_names, output_names, part_module,
                    unflatten)
from .runtime import ort_session

OPSET = 17


class _Flat(nn.Module):
    """``module`` with flat tensor inputs and outputs, for the exporter."""

    def __init__(self, module: nn.Module, in_template, out_template):
        super().__init__()
        self.module = module
        self.in_template, self.out_template = in_template, out_template

    def forward(self, *flat):
        values = dict(zip(leaf_names(self.in_template), flat))
        args = unflatten(values, self.in_template)
        return tuple(flatten(self.module(*args), self.out_template))


def _dynamic_axes(role: str, name: str, ndim: int) -> Dict[int, str]:
    if role == 'roi':
        return {0: 'num_rois'}
    if ndim == 4:
        return {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'}
    return {0: 'batch'}


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
        FileExistsError: ``out_dir`` is a file or a folder that is not
            empty (nothing is written).
    """
    require_onnx()
    check_new_folder(out_dir, 'choose a new folder (nothing is overwritten)')
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
        dataset_meta=to_json(getattr(model, 'dataset_meta', None)),
        data_preprocessor=preprocessor_meta(model),
        parts=[])
    manifest.update(meta or {})
    for part in parts:
        manifest['parts'].append(
            _export_part(
                part_module(model, part), part, examples[part.name],
                part_module(fresh, part), out_dir, opset))
    cfg.dump(osp.join(out_dir, CONFIG))
    write_manifest(manifest, out_dir)
    return manifest


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
    in_template = input_names(part.role, args)
    out_template = output_names(part.role, outputs)
    flat_in = flatten(args, in_template)
    flat_out = flatten(outputs, out_template)
    in_names, out_names = leaf_names(in_template), leaf_names(out_template)
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
    digest, num_params = structure_digest(fresh)
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
