"""Where ONNX Runtime spends its time: ending the profiling of an attached
model's sessions and the time share of each operator type in the
profiles."""
import json
from typing import Dict, Iterable, List, Union

import torch.nn as nn

from .runtime import onnx_modules

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
    'MultiHeadAttention': 'Attention',
}


def end_profiling(model: nn.Module) -> List[str]:
    """End the profiling of every session of a model attached with a
    ``profile_prefix``; returns the profile files written."""
    return [
        session.end_profiling() for m in onnx_modules(model).values()
        for session in m.sessions
    ]


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
