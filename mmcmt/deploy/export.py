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
from .parts import (Part, SizeInputs, capture_part_inputs, detector_parts,
                    flatten, input_names, leaf_names, output_names,
                    part_module, size_inputs, unflatten)
from .runtime import OnnxRuntimeModule

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
    spec = dict(
        name=part.name,
        file=f'{part.name}.onnx',
        replaces=part.paths,
        role=part.role,
        inputs=in_template,
        outputs=out_template)
    graph_inputs, graph_args, size_axes = in_template, args, {}

    def axes(name, tensor):
        return size_axes.get(name) or _dynamic_axes(part.role, name,
                                                    tensor.dim())

    if part.role == 'features' and size_inputs(module.backbone):
        # computed once per image size at run time, inputs of the graph
        sizer = SizeInputs(module.backbone)
        with torch.no_grad():
            extra = sizer(*args)
        names = [f'size_input{i}' for i in range(len(extra))]
        size_axes = {
            n: {
                i: f'{n}_{i}'
                for i in range(t.dim())
            }
            for n, t in zip(names, extra)
        }
        file = f'{part.name}.size_inputs.onnx'
        spec['size_inputs'] = dict(
            file=file,
            inputs=in_template,
            outputs=names,
            **_export_graph(sizer, in_template, args, names, extra,
                            osp.join(out_dir, file), opset, axes))
        graph_inputs, graph_args = in_template + names, args + extra
    spec.update(
        _export_graph(module, graph_inputs, graph_args, out_template, outputs,
                      osp.join(out_dir, spec['file']), opset, axes))
    runner = OnnxRuntimeModule.from_spec(spec, out_dir)
    with torch.no_grad():
        got = flatten(runner(*args), out_template)
    digest, num_params = structure_digest(fresh)
    spec.update(
        max_abs_error_at_trace=max(
            float((g - e).abs().max())
            for g, e in zip(got, flatten(outputs, out_template))),
        structure_sha256=digest,
        num_parameters=num_params)
    return spec


def _export_graph(module: nn.Module, in_template, args, out_template, outputs,
                  path: str, opset: int, axes) -> dict:
    """Trace ``module`` on ``args`` into the graph at ``path``; returns its
    shapes at the trace and dynamic axes (``axes(name, tensor)``)."""
    flat_in = flatten(args, in_template)
    flat_out = flatten(outputs, out_template)
    in_names, out_names = leaf_names(in_template), leaf_names(out_template)
    dynamic = {
        n: axes(n, t)
        for n, t in zip(in_names + out_names, flat_in + flat_out)
    }
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
    return dict(
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
        })
