"""Parameter and FLOP counting with mmengine's jit-based counter, extended to
fused attention (``scaled_dot_product_attention``), which it does not know.

Two conventions are reported, because papers differ:

- ``macs``: multiply-accumulates of convolutions, linear layers and the
  attention's two matrix products (q·kᵀ and attn·v) only, the convention of
  the CMT paper's ImageNet table (torchprofile in the authors' training
  code); the paper's detection table leaves the attention's matrix
  products out.
- ``mmengine``: mmengine's default operator set (convolutions, linear
  layers, matrix products, norms, pooling, upsampling) plus the attention's
  matrix products.

One multiply-add counts as one FLOP in both, as in the papers.
:func:`complexity` gives a module's figures in millions and billions and
:func:`complexity_table` prints them (``tools/get_flops.py``).
"""
from collections import Counter
from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn

#: Operators (mmengine counter names) of the ``macs`` convention.
MAC_OPERATORS = ('conv', 'linear', 'addmm', 'matmul', 'bmm', 'mm', 'einsum',
                 'scaled_dot_product_attention')
#: The columns of :func:`complexity_table`: header -> key of
#: :func:`complexity`'s figures (parameters in millions, FLOPs in billions).
COLUMNS = (
    ('params (M)', 'params'),
    ('FLOPs (G)', 'flops'),
    ('FLOPs mmengine (G)', 'flops_mmengine'),
    ('attention matmuls (G)', 'attention'),
    ('FLOPs without attention matmuls (G)', 'flops_without_attention'),
)


def sdpa_flop_jit(inputs, outputs) -> int:
    """q·kᵀ and attn·v of ``scaled_dot_product_attention(q, k, v, ...)``."""
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for dim in q[:-2]:
        batch *= dim
    num_queries, dims = q[-2], q[-1]
    num_keys, value_dims = k[-2], v[-1]
    return batch * num_queries * num_keys * (dims + value_dims)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, inputs: Tuple[torch.Tensor,
                                                ...]) -> Dict[str, object]:
    """Trace ``model(*inputs)`` and count FLOPs.

    Returns:
        dict: ``mmengine`` and ``macs`` totals and ``by_operator``, a
        Counter over operator names, for the whole model.
    """
    from mmengine.analysis import FlopAnalyzer
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    by_operator = Counter(analyzer.by_operator())
    return dict(
        mmengine=sum(by_operator.values()),
        macs=sum(v for k, v in by_operator.items() if k in MAC_OPERATORS),
        by_operator=by_operator)


def complexity(model: nn.Module, inputs: Tuple[torch.Tensor,
                                               ...]) -> Dict[str, float]:
    """The figures of :data:`COLUMNS` for ``model(*inputs)``, traced without
    gradients: its parameters in millions, and the FLOPs of both
    conventions, the attention's matrix products alone and ``macs`` without
    them, in billions."""
    with torch.no_grad():
        flops = count_flops(model, inputs)
    attention = flops['by_operator']['scaled_dot_product_attention']
    return dict(
        params=count_params(model) / 1e6,
        flops=flops['macs'] / 1e9,
        flops_mmengine=flops['mmengine'] / 1e9,
        attention=attention / 1e9,
        flops_without_attention=(flops['macs'] - attention) / 1e9)


def complexity_table(
        rows: Sequence[Tuple[str, Tuple[int, int], Dict[str, float],
                             int]]) -> str:
    """A markdown table of ``(name, (H, W), figures, digits)`` rows:
    ``figures`` as :func:`complexity` gives them, parameters with 2
    decimals, FLOPs with ``digits``."""
    lines = [
        '| model | input (W x H) | ' + ' | '.join(h
                                                  for h, _ in COLUMNS) + ' |',
        '|---' * (len(COLUMNS) + 2) + '|'
    ]
    for name, (height, width), figures, digits in rows:
        cells = [
            f'{figures[key]:.{2 if key == "params" else digits}f}'
            for _, key in COLUMNS
        ]
        lines.append(f'| {name} | {width}x{height} | ' + ' | '.join(cells) +
                     ' |')
    return '\n'.join(lines)
