"""CMT's attention alone, as a training step runs it: every block's
attention forward and backward on tensors of the shapes and layouts the
step gives it, with mmcmt's attention (the bias's gradient included) and,
as a bound, PyTorch's ``scaled_dot_product_attention`` with the bias as a
constant mask (no gradient for it: on a CPU its fused flash kernel, forward
and backward). What the rest of the step may take is the step minus this."""
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from mmcmt.models.backbones.cmt import LightweightAttention
from mmcmt.models.utils.attention import biased_attention
from mmcmt.models.utils.grad_checkpoint import keep_bn_statistics


def attention_calls(model: torch.nn.Module, x: torch.Tensor) -> List[tuple]:
    """``(x shape, bias shape, heads, scale)`` of every
    :class:`LightweightAttention` call of ``model``'s forward on ``x``
    (training mode, no gradients, BatchNorm statistics kept)."""
    calls = []

    def record(module, args):
        tokens, bias = args
        calls.append((tuple(tokens.shape), tuple(bias.shape), module.num_heads,
                      module.scale))

    hooks = [
        module.register_forward_pre_hook(record) for module in model.modules()
        if isinstance(module, LightweightAttention)
    ]
    try:
        with torch.no_grad(), keep_bn_statistics(model):
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def attention_step(model: torch.nn.Module,
                   x: torch.Tensor) -> Callable[[], Dict[str, float]]:
    """The timed run: forward and backward of every block's attention of a
    training step of ``model`` on ``x``; returns its timings (seconds):
    ``train_attention`` (mmcmt's) and ``train_attention_fused`` (SDPA with
    a constant mask). Blocks of the same shapes share their random inputs."""
    generator = torch.Generator().manual_seed(0)
    inputs = {}

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(x.device)

    calls = attention_calls(model, x)
    for tokens, bias_shape, heads, scale in calls:
        if (tokens, bias_shape) in inputs:
            continue
        B, H, W, C = tokens
        N, Nk = bias_shape[1:]
        # the layouts LightweightAttention gives: heads split off the
        # channels of (B, N, C) tokens, k and v from one (B, Nk, 2C) map
        q, grad = (
            randn(B, N, C).unflatten(-1, (heads, -1)).transpose(1, 2)
            for _ in range(2))
        k, v = randn(B, Nk, 2, heads, C // heads).permute(2, 0, 3, 1, 4)
        inputs[tokens, bias_shape] = (q, k, v, randn(*bias_shape), grad)

    def run():
        timings = {}
        for key, attention in (('train_attention', _ours),
                               ('train_attention_fused', _constant_mask)):
            start = time.perf_counter()
            for tokens, bias_shape, _, scale in calls:
                q, k, v, bias, grad = inputs[tokens, bias_shape]
                attention(q, k, v, bias, scale).backward(grad)
            if x.device.type == 'cuda':
                torch.cuda.synchronize(x.device)
            timings[key] = time.perf_counter() - start
        return timings

    return run


def _leaves(*tensors):
    return (t.detach().requires_grad_() for t in tensors)


def _ours(q, k, v, bias, scale):
    return biased_attention(*_leaves(q, k, v, bias), scale)


def _constant_mask(q, k, v, bias, scale):
    return F.scaled_dot_product_attention(
        *_leaves(q, k, v), attn_mask=bias.unsqueeze(0), scale=scale)
