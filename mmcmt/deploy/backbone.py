"""A CMT backbone alone in ONNX (``tools/export_backbone_onnx.py``, ``python
-m mmcmt.check``): one graph with dynamic batch, height and width (padding
to a multiple of 32 and the resizing of the position biases are part of
it), outputs ``out0`` ... at strides 4 to 32, checked in ONNX Runtime."""
import warnings
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from ..compat import ONNX_EXPORT_KWARGS
from .export import OPSET
from .runtime import ort_session, run_by_image


def export_backbone(model: nn.Module,
                    out: str,
                    shape: Sequence[int],
                    opset: int = OPSET) -> None:
    """Export ``model`` (a CMT in eval mode, on the CPU) traced at ``(1, C,
    *shape)`` to the file ``out``: input ``input``, outputs ``out0`` ...,
    every size dynamic."""
    x = torch.randn(1, model.in_channels, *shape)
    names = [f'out{i}' for i in range(len(model.out_indices))]
    dynamic = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
    dynamic.update({
        name: {
            0: 'batch',
            2: f'{name}_height',
            3: f'{name}_width'
        }
        for name in names
    })
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tracer and deprecation chatter
        # The TorchScript-based exporter: it traces the size arithmetic
        # (padding, bias resizing) into the graph. (The dynamo exporter
        # cannot yet solve the floor divisions of dynamic sizes.)
        torch.onnx.export(
            model, (x, ),
            out,
            input_names=['input'],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=opset,
            **ONNX_EXPORT_KWARGS)


def run_backbone(out: str, x: torch.Tensor) -> List[torch.Tensor]:
    """The outputs of the exported backbone ``out`` on ``x`` in ONNX
    Runtime (CPU)."""
    session = ort_session(out)
    return [
        torch.from_numpy(y)
        for y in run_by_image(session, None, {'input': x.cpu().numpy()}, {})
    ]


def check_backbone(model: nn.Module, out: str,
                   shapes) -> List[Tuple[tuple, List[float]]]:
    """``[(shape, [max abs error of each output])]`` of the exported
    backbone ``out`` in ONNX Runtime against ``model`` on random inputs."""
    results = []
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x)
        got = run_backbone(out, x)
        results.append(
            (tuple(shape),
             [float((g - e).abs().max()) for g, e in zip(got, expected)]))
    return results
