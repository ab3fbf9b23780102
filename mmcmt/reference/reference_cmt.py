"""An independent re-derivation of the released CMT computation.

Written from ``shared/reference/cmt_architecture.md`` in the style of the
released code: tokens ``(B, N, C)``, separate q/k/v, an explicit attention
matrix, reshapes between tokens and maps. It reads an official-layout state
dict directly (no mmcmt code), so comparing mmcmt against it checks the
key mapping as well as the computation. BatchNorm uses the running
statistics, or the batch statistics with ``bn_training=True``.

:class:`NaiveCMT` wraps it as a module for ``tools/benchmark.py``: the
straightforward way to run the released code on detection inputs, kept as
the baseline that mmcmt's CMT must beat.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .official import custom_arch_official_shapes, random_official_state_dict

STAGES = 'abcd'
BN_TRAINING = [False]


def _bn(x, sd, name):
    if BN_TRAINING[0]:
        return F.batch_norm(x, None, None, sd[f'{name}.weight'],
                            sd[f'{name}.bias'], True, 0., 1e-5)
    return F.batch_norm(x, sd[f'{name}.running_mean'],
                        sd[f'{name}.running_var'], sd[f'{name}.weight'],
                        sd[f'{name}.bias'], False, 0., 1e-5)


def _conv(x, sd, name, stride=1, padding=0, groups=1):
    return F.conv2d(x, sd[f'{name}.weight'], sd[f'{name}.bias'], stride,
                    padding, 1, groups)


def _linear(x, sd, name):
    return F.linear(x, sd[f'{name}.weight'], sd[f'{name}.bias'])


def _ln(x, sd, name, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f'{name}.weight'],
                        sd[f'{name}.bias'], eps)


def _block(x, sd, name, H, W, heads, sr, rel_pos):
    B, N, C = x.shape
    # LPU
    m = x.transpose(1, 2).reshape(B, C, H, W)
    m = _conv(m, sd, f'{name}.proj', padding=1, groups=C) + m
    x = m.flatten(2).transpose(1, 2)
    # LMHSA
    y = _ln(x, sd, f'{name}.norm1', 1e-6)
    q = _linear(y, sd, f'{name}.attn.q').reshape(B, N, heads, -1)
    q = q.permute(0, 2, 1, 3)
    if sr > 1:
        m = y.transpose(1, 2).reshape(B, C, H, W)
        m = _conv(m, sd, f'{name}.attn.sr.0', stride=sr, groups=C)
        m = _bn(m, sd, f'{name}.attn.sr.1')
        y = m.flatten(2).transpose(1, 2)
    k = _linear(y, sd, f'{name}.attn.k').reshape(B, -1, heads, C // heads)
    v = _linear(y, sd, f'{name}.attn.v').reshape(B, -1, heads, C // heads)
    k, v = k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
    attn = q @ k.transpose(-2, -1) * (C // heads)**-0.5 + rel_pos
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
    x = x + _linear(out, sd, f'{name}.attn.proj')
    # IRFFN
    y = _ln(x, sd, f'{name}.norm2', 1e-6)
    m = y.transpose(1, 2).reshape(B, C, H, W)
    m = _bn(
        F.gelu(_conv(m, sd, f'{name}.mlp.conv1.0')), sd, f'{name}.mlp.conv1.2')
    hidden = m.shape[1]
    m = _conv(m, sd, f'{name}.mlp.proj', padding=1, groups=hidden) + m
    m = _bn(F.gelu(m), sd, f'{name}.mlp.proj_bn')
    m = _bn(_conv(m, sd, f'{name}.mlp.conv2.0'), sd, f'{name}.mlp.conv2.1')
    return x + m.flatten(2).transpose(1, 2)


def reference_cmt(sd,
                  x,
                  depths,
                  num_heads,
                  sr_ratios=(8, 4, 2, 1),
                  bn_training=False):
    """Stage outputs ``[(B, C_i, H_i, W_i)] * 4`` and, when the state dict
    has the head, the logits ``(B, classes)`` (else None)."""
    BN_TRAINING[0] = bn_training
    for i in (1, 2, 3):
        x = _conv(x, sd, f'stem_conv{i}', stride=2 if i == 1 else 1, padding=1)
        x = _bn(F.gelu(x), sd, f'stem_norm{i}')
    outs = []
    for s, stage in enumerate(STAGES):
        x = _conv(x, sd, f'patch_embed_{stage}.proj', stride=2)
        B, C, H, W = x.shape
        x = _ln(
            x.flatten(2).transpose(1, 2), sd, f'patch_embed_{stage}.norm',
            1e-5)
        for j in range(depths[s]):
            x = _block(x, sd, f'blocks_{stage}.{j}', H, W, num_heads[s],
                       sr_ratios[s], sd[f'relative_pos_{stage}'])
        x = x.transpose(1, 2).reshape(B, C, H, W)
        outs.append(x)
    logits = None
    if '_fc.weight' in sd:
        y = _bn(_conv(x, sd, '_fc'), sd, '_bn')
        y = (y * torch.sigmoid(y)).mean((2, 3))
        logits = _linear(y, sd, 'head')
    return outs, logits


class NaiveCMT(nn.Module):
    """:func:`reference_cmt` as a backbone module, at any input size that is
    a multiple of 32: each stage's relative position bias is resized to the
    running grid by bicubic interpolation on every forward, and added to an
    explicit attention matrix.

    Args:
        state_dict (dict): an official-layout state dict (without head).
        settings (dict): ``depths``, ``num_heads``, ``sr_ratios`` of the arch
            (``CMT.parse_arch(arch)``).
    """

    def __init__(self, state_dict, settings):
        super().__init__()
        self.settings = settings
        self.weights = nn.ParameterDict()
        for key, value in state_dict.items():
            name = key.replace('.', '__')
            buffer = ('running_mean', 'running_var', 'num_batches_tracked')
            if key.endswith(buffer):
                self.register_buffer(name, value.clone())
            else:
                self.weights[name] = nn.Parameter(value.clone())

    def state(self):
        sd = {k.replace('__', '.'): v for k, v in self.weights.items()}
        sd.update((k.replace('__', '.'), v) for k, v in self.named_buffers())
        return sd

    def forward(self, x):
        from mmcmt.models.utils.relative_position import (
            infer_square_grid, resize_relative_position_bias)
        sd = self.state()
        H, W = x.shape[-2:]
        for s, (stage,
                sr) in enumerate(zip(STAGES, self.settings['sr_ratios'])):
            bias = sd[f'relative_pos_{stage}']
            src = infer_square_grid(bias.shape[1])
            grid = (H // (4 << s), W // (4 << s))
            sd[f'relative_pos_{stage}'] = resize_relative_position_bias(
                bias, src, (src[0] // sr, src[1] // sr), grid,
                (grid[0] // sr, grid[1] // sr))
        outs, _ = reference_cmt(sd, x, self.settings['depths'],
                                self.settings['num_heads'],
                                self.settings['sr_ratios'], self.training)
        return tuple(outs)


def naive_cmt(model_cls, arch, seed=0):
    """:class:`NaiveCMT` of ``arch`` (an arch name or dict that
    ``model_cls.parse_arch`` reads) with random weights (``seed``) in the
    released checkpoints' layout, without the classification head: load
    ``naive.state()`` into ``model_cls`` (:class:`mmcmt.models.CMT`) for the
    same function."""
    settings = model_cls.parse_arch(arch)
    shapes = custom_arch_official_shapes(
        model_cls, arch, img_size=settings.get('pretrain_img_size', 224))
    state = {
        k: v
        for k, v in random_official_state_dict(shapes, seed).items()
        if not k.startswith(('_fc', '_bn', 'head'))
    }
    return NaiveCMT(state, settings)
