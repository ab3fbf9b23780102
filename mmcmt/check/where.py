"""What runs where, read from PyTorch's profiler (the operators the
dispatcher ran, not what mmcmt means to run): which kernel of
``scaled_dot_product_attention`` serves CMT's attention in inference and in
a training step (flash, memory-efficient, cuDNN, math) or mmcmt's own
attention function (:mod:`mmcmt.models.utils.attention`), and which form
of the IRFFN trains (the memory-lean form of
:mod:`mmcmt.models.backbones.cmt_lean_training` in float32 and under
autocast and with SyncBatchNorm).

Each is checked against mmcmt's rule for this device and torch: a fused
kernel wherever torch has one for a float bias (on CUDA, the math path
would keep every attention matrix), the fallback of :mod:`mmcmt.compat`
where it does not."""
from collections import Counter, OrderedDict
from typing import Callable

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from .. import compat
from ..models import CMT
from ..models.backbones.cmt import IRFFN
from ..utils import AMP_DTYPES, autocast
from .correctness import random_input, size_text

#: SDPA's kernels (operators, as the profiler names them without
#: ``aten::``) -> the backend they are; their backward passes add
#: ``_backward``.
SDPA_KERNELS = OrderedDict([
    ('_scaled_dot_product_flash_attention_for_cpu', 'flash (CPU)'),
    ('_scaled_dot_product_flash_attention', 'flash'),
    ('_scaled_dot_product_efficient_attention', 'memory-efficient'),
    ('_scaled_dot_product_cudnn_attention', 'cuDNN'),
    ('_scaled_dot_product_fused_attention_overrideable', 'fused (device)'),
    ('_scaled_dot_product_attention_math_for_mps', 'math (MPS)'),
    ('_scaled_dot_product_attention_math', 'math'),
])
#: mmcmt's autograd functions, as the profiler names them.
CPU_ATTENTION = '_CPUBiasedAttention'
LEAN_IRFFN = '_LeanIRFFN'


def operator_counts(fn: Callable[[], object]) -> Counter:
    """How many times each operator and autograd function ran in
    ``fn()``, from the profiler (CPU events: the dispatcher's operators,
    whichever device they run on)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return Counter({e.key: e.count for e in prof.key_averages()})


def graph_node_counts(outputs) -> Counter:
    """How many times each backward node (``_LeanIRFFNBackward``, ...)
    is in the autograd graph of ``outputs``: what will run backward, read
    without the profiler. Under bfloat16 autocast on a CPU without native
    bfloat16 kernels, the profiler records every step of the fallback
    convolutions: minutes and gigabytes for a 64x64 input."""
    found, seen = Counter(), set()
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        found[type(node).__name__] += 1
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return found


def sdpa_backends(counts: Counter, backward: bool = False) -> Counter:
    """backend -> calls, from :func:`operator_counts` (each call counted
    once, by its most specific kernel)."""
    found = Counter()
    suffix = '_backward' if backward else ''
    for op, backend in SDPA_KERNELS.items():
        found[backend] = counts.get(f'aten::{op}{suffix}', 0)
    return Counter({k: v for k, v in found.items() if v})


def describe(found: Counter) -> str:
    return ', '.join(f'{name} x{count}' for name, count in found.items()) \
        or 'none'


def run(report, setup) -> None:
    device, arch, plan = setup.device, setup.arch, setup.plan
    # the lean training forms' kernels, whichever form 'auto' picks here
    model = CMT(arch, lean_training=True).to(device)
    calls = sum(model.arch['depths'])  # attention calls per forward
    report.info('attention calls per forward', f'{calls} (one per block)')
    with report.guard('attention in inference'):
        _inference(report, model, plan, device, calls)
    with report.guard('attention and IRFFN in training'):
        _training(report, model, plan, device, calls)
    with report.guard('IRFFN under autocast and with SyncBatchNorm'):
        _irffn_forms(report, model, device, calls)


def _inference(report, model, plan, device, calls) -> None:
    x = random_input(plan.det).to(device)
    model.eval()
    with torch.no_grad():
        counts = operator_counts(lambda: model(x))
    found = sdpa_backends(counts)
    report.info(f'inference {size_text(x)}', f'SDPA {describe(found)}')
    if device.type == 'cpu':
        expected = ('flash (CPU)'
                    if compat.HAS_CPU_FLASH_ATTENTION_MASK else 'math')
        ok = found == Counter({expected: calls})
        rule = (f'{expected} x{calls}' +
                ('' if compat.HAS_CPU_FLASH_ATTENTION_MASK else
                 ' (no masked CPU flash kernel in this torch)'))
    else:
        ok = sum(found.values()) == calls and not _math(found)
        rule = f'a fused kernel x{calls}, not math'
    report.check('attention in inference as expected', ok, f'expected {rule}')


def _math(found: Counter) -> bool:
    return any(name.startswith('math') for name in found)


def _training(report, model, plan, device, calls) -> None:
    x = random_input(plan.step).to(device)
    model.train()
    counts = operator_counts(
        lambda: sum(o.mean() for o in model(x)).backward())
    model.zero_grad(set_to_none=True)
    forward, backward = sdpa_backends(counts), sdpa_backends(counts, True)
    ours = counts.get(CPU_ATTENTION, 0)
    if ours:
        inner = describe(forward) if forward else 'blockwise (no SDPA kernel)'
        text = (f'mmcmt\'s attention x{ours} (forward: {inner}; backward: '
                f'blockwise recomputation x'
                f'{counts.get(CPU_ATTENTION + "Backward", 0)})')
    else:
        text = (f'SDPA {describe(forward)}; backward '
                f'{describe(backward) if backward else "autograd of math"}')
    report.info(f'training step {size_text(x)}', text)
    lean = counts.get(LEAN_IRFFN, 0)
    report.info('IRFFN in training (float32)',
                f'lean form x{lean} of {calls} blocks')
    if device.type == 'cpu':
        inner = ('flash (CPU)'
                 if compat.HAS_CPU_FLASH_ATTENTION_MASK else None)
        ok = ours == calls and (forward == Counter({inner: calls})
                                if inner else not forward)
        rule = (f'mmcmt\'s attention x{calls}, forward '
                f'{inner or "blockwise"}')
    else:
        ok = sum(forward.values()) == calls and not _math(forward)
        rule = f'SDPA on a fused kernel x{calls}, not math'
    report.check('attention in training as expected', ok, f'expected {rule}')
    report.check('IRFFN trains in its lean form', lean == calls,
                 f'{lean} of {calls} blocks')


def _irffn_forms(report, model, device, calls) -> None:
    """The IRFFN's form under autocast and with SyncBatchNorm (the lean
    one in both); a small input, the form does not depend on it."""
    x = random_input((2, 64, 64)).to(device)
    model.train()
    # bfloat16 first on a CPU, where float16 runs slow fallback kernels
    order = ('bf16', 'fp16') if device.type == 'cpu' else ('fp16', 'bf16')
    amp = next((name for name in order
                if compat.autocast_supported(device.type, AMP_DTYPES[name])),
               None)
    if amp is None:
        report.info('IRFFN under autocast',
                    f'not run: no autocast dtype on {device.type}')
    else:

        with autocast(device, amp):
            outputs = model(x)
        lean = graph_node_counts(outputs).get(LEAN_IRFFN + 'Backward', 0)
        sum(o.float().mean() for o in outputs).backward()
        model.zero_grad(set_to_none=True)
        report.check(f'IRFFN trains in its lean form under autocast ({amp})',
                     lean == calls, f'{lean} of {calls} blocks')
    ffn = nn.SyncBatchNorm.convert_sync_batchnorm(IRFFN(32, 128)).to(device)
    tokens = torch.randn(2, 8, 8, 32, device=device, requires_grad=True)
    lean = operator_counts(lambda: ffn(tokens).sum().backward()).get(
        LEAN_IRFFN, 0)
    report.check('IRFFN trains in its lean form with SyncBatchNorm', lean == 1,
                 _form(lean))


def _form(lean: int) -> str:
    return f'lean form x{lean}' if lean else 'plain layers'
