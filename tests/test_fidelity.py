"""mmcmt computes what the released checkpoints compute.

Compared against ``reference_cmt``, an independent re-derivation written
from the architecture reference, with random weights in the official layout
(random BN statistics included): both round in float32, each its own way.

Tolerances: ten times the largest relative error measured, over 5 seeds
with each of two kernel sets (the rule of cmt_helpers.py). In inference the
largest, 6.5e-6, is CMT-B's backbone outputs (32 blocks; its logits 1.3e-6,
CMT-Ti's outputs 2.2e-6): :data:`TOL` 1e-4. A wrong layer, key or bias
resize is off by 1e-2 and more.
"""
import pytest
import torch
from helpers import (ARCH_OF_VARIANT, custom_arch_official_shapes,
                     official_shapes, random_official_state_dict,
                     relative_error)

from mmcmt.models import CMT, CMTClassifier
from mmcmt.models.utils import resize_relative_position_bias
from mmcmt.reference import reference_cmt

TOL = 1e-4
SHAPES = official_shapes()
SMALL_ARCH = dict(
    embed_dims=[16, 32, 48, 64],
    depths=[1, 2, 1, 1],
    num_heads=[1, 2, 3, 4],
    mlp_ratios=[2, 3.5, 4, 2.25],
    sr_ratios=[4, 2, 2, 1],
    stem_channels=8)


def _compare(model, sd, x, arch):
    settings = CMT.parse_arch(arch)
    with torch.no_grad():
        got = model(x)
        ref_outs, ref_logits = reference_cmt(sd, x, settings['depths'],
                                             settings['num_heads'],
                                             settings['sr_ratios'])
    return got, ref_outs, ref_logits


@pytest.mark.parametrize('variant', list(ARCH_OF_VARIANT))
def test_released_variants_match_reference(variant):
    arch, info = ARCH_OF_VARIANT[variant], SHAPES[variant]
    sd = random_official_state_dict(info['state_dict'], seed=1)
    x = torch.randn(2, 3, info['img_size'], info['img_size'])

    classifier = CMTClassifier(arch).eval()
    classifier.load_state_dict(sd, strict=True)
    logits, ref_outs, ref_logits = _compare(classifier, sd, x, arch)
    assert logits.shape == (2, 1000)
    assert relative_error(logits, ref_logits) < TOL

    backbone = CMT(arch).eval()
    backbone.load_state_dict(sd, strict=True)  # head dropped by the hook
    outs = backbone(x)
    for out, ref in zip(outs, ref_outs):
        assert out.shape == ref.shape
        assert relative_error(out, ref) < TOL


def test_released_parameter_counts():
    for variant, arch in ARCH_OF_VARIANT.items():
        model = CMTClassifier(arch)
        assert sum(p.numel() for p in model.parameters()) == \
            SHAPES[variant]['params']


def test_custom_arch_matches_reference():
    shapes = custom_arch_official_shapes(CMT, SMALL_ARCH, img_size=64)
    sd = random_official_state_dict(shapes, seed=2)
    model = CMTClassifier(
        SMALL_ARCH, num_classes=10, fc_dim=64, pretrain_img_size=64).eval()
    model.load_state_dict(sd, strict=True)
    x = torch.randn(3, 3, 64, 64)
    logits, ref_outs, ref_logits = _compare(model, sd, x, SMALL_ARCH)
    assert relative_error(logits, ref_logits) < TOL
    outs = CMT(SMALL_ARCH, pretrain_img_size=64).eval()
    outs.load_state_dict(sd)
    for out, ref in zip(outs(x), ref_outs):
        assert relative_error(out, ref) < TOL


def test_other_size_matches_reference_with_resized_bias():
    """Away from the pre-training size only the bias changes: the reference
    given the same resized biases computes the same maps (non-square grid)."""
    shapes = custom_arch_official_shapes(CMT, SMALL_ARCH, img_size=64)
    sd = random_official_state_dict(shapes, seed=3)
    model = CMT(SMALL_ARCH, pretrain_img_size=64).eval()
    model.load_state_dict(sd)
    H, W = 96, 160
    ref_sd = dict(sd)
    for i, (stage, sr) in enumerate(zip('abcd', SMALL_ARCH['sr_ratios'])):
        s = 4 * 2**i
        src, dst = (64 // s, 64 // s), (H // s, W // s)
        ref_sd[f'relative_pos_{stage}'] = resize_relative_position_bias(
            sd[f'relative_pos_{stage}'], src, (src[0] // sr, src[1] // sr),
            dst, (dst[0] // sr, dst[1] // sr))
    x = torch.randn(1, 3, H, W)
    outs, ref_outs, _ = _compare(model, ref_sd, x, SMALL_ARCH)
    for out, ref in zip(outs, ref_outs):
        assert out.shape == ref.shape
        assert relative_error(out, ref) < TOL


@pytest.mark.parametrize('lean_training', [True, False])
def test_training_mode_outputs_and_gradients_match_reference(lean_training):
    """Training mode (batch statistics in BN), through the lean forms and
    the plain layers: same maps, and the same gradients for the input and
    for the relative position biases. In float64, so that the comparison is
    not limited by round-off amplified through the batch statistics
    (float32 gives about 5e-6 on gradients): ten times the largest measured
    (7.5e-14, gradients), 1e-12."""
    shapes = custom_arch_official_shapes(CMT, SMALL_ARCH, img_size=64)
    sd = {
        k: v.double() if v.is_floating_point() else v
        for k, v in random_official_state_dict(shapes, seed=4).items()
    }
    model = CMT(
        SMALL_ARCH, pretrain_img_size=64,
        lean_training=lean_training).double().train()
    model.load_state_dict(sd)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, requires_grad=True)
    outs = model(x)
    cotangents = [torch.randn_like(o) for o in outs]
    biases = [stage.relative_position_bias for stage in model.stages]
    grads = torch.autograd.grad(
        sum((o * c).sum() for o, c in zip(outs, cotangents)), [x] + biases)

    ref_sd = {
        k: v.clone().requires_grad_(k.startswith('relative_pos'))
        for k, v in sd.items()
    }
    ref_x = x.detach().clone().requires_grad_()
    ref_outs, _ = reference_cmt(
        ref_sd,
        ref_x,
        SMALL_ARCH['depths'],
        SMALL_ARCH['num_heads'],
        SMALL_ARCH['sr_ratios'],
        bn_training=True)
    ref_grads = torch.autograd.grad(
        sum((o * c).sum() for o, c in zip(ref_outs, cotangents)),
        [ref_x] + [ref_sd[f'relative_pos_{s}'] for s in 'abcd'])
    for out, ref in zip(outs, ref_outs):
        assert relative_error(out, ref) < 1e-12
    for grad, ref in zip(grads, ref_grads):
        assert relative_error(grad, ref) < 1e-12


FUSED_ARCH = dict(
    embed_dims=[16, 32, 48, 64],
    depths=[1, 1, 1, 1],
    num_heads=[1, 2, 2, 4],
    mlp_ratios=2,
    sr_ratios=[2, 2, 2, 1],
    stem_channels=8)


def test_fused_inference_attention_matches_reference(monkeypatch):
    """Eval through PyTorch's SDPA in every stage, against the
    reference."""
    from mmcmt.models.utils import attention
    shapes = custom_arch_official_shapes(CMT, FUSED_ARCH, img_size=192)
    sd = random_official_state_dict(shapes, seed=6)
    model = CMT(FUSED_ARCH, pretrain_img_size=192).eval()
    model.load_state_dict(sd)
    fused = []
    real = attention.F.scaled_dot_product_attention
    monkeypatch.setattr(
        attention.F, 'scaled_dot_product_attention',
        lambda q, *args, **kwargs: fused.append(tuple(q.shape)) or real(
            q, *args, **kwargs))
    x = torch.randn(2, 3, 192, 192)
    outs, ref_outs, _ = _compare(model, sd, x, FUSED_ARCH)
    assert fused == [(2, 1, 48 * 48, 16), (2, 2, 24 * 24, 16),
                     (2, 2, 12 * 12, 24), (2, 4, 6 * 6, 16)]
    for out, ref in zip(outs, ref_outs):
        assert out.shape == ref.shape
        assert relative_error(out, ref) < TOL


@pytest.mark.parametrize('lean_training', [True, False])
@pytest.mark.parametrize('norm_eval', [True, False])
def test_training_attention_float32_matches_reference(norm_eval, lean_training,
                                                      monkeypatch):
    """Training in float32 through the fused forward and blockwise backward
    of _CPUBiasedAttention (several blocks of queries per backward), against
    the reference computed in float64: outputs and the gradients of the
    input and the biases, through the lean forms and the plain layers. Ten
    times the largest relative error measured (5 seeds, two kernel sets):
    with BN on running statistics (norm_eval, as in detection fine-tuning)
    outputs 8.8e-7 and gradients 2.0e-6, so 1e-5 and 2e-5; with BN on batch
    statistics, which amplify float32's round-off, outputs 2.8e-6 and
    gradients 5.7e-6 (9e-6 once measured at this test's seed), so 5e-5 and
    1e-4."""
    from mmcmt.models.utils import attention
    monkeypatch.setattr(attention, 'BLOCK_ELEMENTS', 1 << 14)
    calls = []
    function = attention._CPUBiasedAttention
    real_forward, real_backward = function.forward, function.backward

    def forward(ctx, q, *args):
        calls.append(('forward', q.shape[2]))
        return real_forward(ctx, q, *args)

    def backward(ctx, grad_out):
        calls.append(('backward', grad_out.shape[2]))
        return real_backward(ctx, grad_out)

    monkeypatch.setattr(function, 'forward', staticmethod(forward))
    monkeypatch.setattr(function, 'backward', staticmethod(backward))

    shapes = custom_arch_official_shapes(CMT, FUSED_ARCH, img_size=96)
    sd = random_official_state_dict(shapes, seed=7)
    model = CMT(
        FUSED_ARCH,
        pretrain_img_size=96,
        norm_eval=norm_eval,
        lean_training=lean_training)
    model.load_state_dict(sd)
    model.train()
    x = torch.randn(2, 3, 96, 96, requires_grad=True)
    outs = model(x)
    cotangents = [torch.randn_like(o) for o in outs]
    biases = [stage.relative_position_bias for stage in model.stages]
    grads = torch.autograd.grad(
        sum((o * c).sum() for o, c in zip(outs, cotangents)), [x] + biases)
    queries = [(96 // (4 << i))**2 for i in range(4)]
    assert sorted(calls) == sorted([('forward', n)
                                    for n in queries] + [('backward', n)
                                                         for n in queries])

    ref_sd = {
        k:
        v.double().requires_grad_(k.startswith('relative_pos'))
        if v.is_floating_point() else v
        for k, v in sd.items()
    }
    ref_x = x.detach().double().requires_grad_()
    ref_outs, _ = reference_cmt(
        ref_sd,
        ref_x,
        FUSED_ARCH['depths'],
        FUSED_ARCH['num_heads'],
        FUSED_ARCH['sr_ratios'],
        bn_training=not norm_eval)
    ref_grads = torch.autograd.grad(
        sum((o * c.double()).sum() for o, c in zip(ref_outs, cotangents)),
        [ref_x] + [ref_sd[f'relative_pos_{s}'] for s in 'abcd'])
    out_tol, grad_tol = (1e-5, 2e-5) if norm_eval else (5e-5, 1e-4)
    for out, ref in zip(outs, ref_outs):
        assert out.dtype == torch.float32
        assert relative_error(out.double(), ref) < out_tol
    for grad, ref in zip(grads, ref_grads):
        assert grad.dtype == torch.float32
        assert relative_error(grad.double(), ref) < grad_tol
