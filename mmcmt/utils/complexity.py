"""Parameter and FLOP counting with mmengine's jit-based counter, extended to
fused attention (``scaled_dot_product_attention``), which it does not know.

Two conventions are reported, because papers differ:

- ``mmengine``: mmengine's default operator set (convolutions, linear layers,
  matrix products, norms, pooling, upsampling) plus the attention products.
- ``macs``: multiply-accumulates of convolutions, linear layers and the
  attention products only (q·kᵀ and attn·v), the convention of the CMT
  paper (torchprofile in the authors' training code).

One multiply-add counts as one FLOP in both, as in the papers.
"""
from collections import Counter
from typing import Dict, Tuple

import torch
import torch.nn as nn

#: Operators (mmengine counter names) of the ``macs`` convention.
MAC_OPERATORS = ('conv', 'linear', 'addmm', 'matmul', 'bmm', 'mm', 'einsum',
                 'scaled_dot_product_attention')


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
