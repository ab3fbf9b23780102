"""The speed work keeps the function: BatchNorm folding (``fuse``), the
fused attention with a blockwise backward, ``torch.compile``, ONNX export
(the benchmark tool's figures: test_benchmark.py).

Each tolerance is ten times the largest error measured over 6 to 10 seeds
with each of two kernel sets, rounded up to 1, 2 or 5 times a power of ten
(the rule of cmt_helpers.py); each test names the largest measured."""
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from helpers import relative_error
from torch.nn.modules.batchnorm import _BatchNorm

from mmcmt.compat import HAS_CPU_FLASH_ATTENTION_MASK
from mmcmt.models import CMT, CMTClassifier
from mmcmt.models.utils import attention
from mmcmt.models.utils.bn_folding import (fold_bn_into_consumer,
                                           fold_bn_into_producer)
from mmcmt.reference import (custom_arch_official_shapes,
                             random_official_state_dict)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))

SMALL_ARCH = dict(
    embed_dims=[16, 32, 48, 64],
    depths=[1, 2, 1, 1],
    num_heads=[1, 2, 3, 4],
    mlp_ratios=[2, 3.5, 4, 2.25],
    sr_ratios=[4, 2, 2, 1],
    stem_channels=8)


def loaded_model(arch=SMALL_ARCH, img_size=64, seed=0):
    """A backbone with random official-layout weights, BN statistics too."""
    shapes = custom_arch_official_shapes(CMT, arch, img_size=img_size)
    model = CMT(arch, pretrain_img_size=img_size)
    model.load_state_dict(random_official_state_dict(shapes, seed=seed))
    return model.eval()


@pytest.mark.parametrize('arch,img_size', [(SMALL_ARCH, 64), ('tiny', 160),
                                           ('small', 224)])
def test_fuse_keeps_outputs(arch, img_size):
    model = loaded_model(arch, img_size)
    x = torch.randn(2, 3, 72, 100)  # not the pre-training size, not /32
    with torch.no_grad():
        expected = model(x)
        bns = sum(isinstance(m, _BatchNorm) for m in model.modules())
        assert model.fuse() is model
        got = model(x)
    left = sum(isinstance(m, _BatchNorm) for m in model.modules())
    blocks = sum(len(stage.blocks) for stage in model.stages)
    with_sr = sum(stage.sr_ratio > 1 for stage in model.stages
                  for _ in stage.blocks)
    # per block: IRFFN norm2, norm3 and the reduction's BN; and one stem BN
    assert bns - left == 2 * blocks + with_sr + 1
    for out, ref in zip(got, expected):  # measured: 3.0e-6 (CMT-S)
        assert relative_error(out, ref) < 5e-5
    assert model.fuse() is model  # a second call changes nothing
    with pytest.raises(RuntimeError, match='fused for inference'):
        model.train()


def test_fold_bn_algebra_and_padded_conv_refused():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    conv = nn.Conv2d(4, 6, 2, stride=2)
    x = torch.randn(1, 4, 8, 8)
    # (differences measured: 7.2e-7 at most, on values of about 1)
    with torch.no_grad():
        expected = conv(bn(x))
        fold_bn_into_consumer(bn, conv)
        assert torch.allclose(conv(x), expected, atol=1e-5)
        producer = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        expected = bn(producer(x))
        fold_bn_into_producer(producer, bn)
        assert torch.allclose(producer(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match='unpadded'):
        fold_bn_into_consumer(bn, nn.Conv2d(4, 4, 3, padding=1))


def test_classifier_fuse_keeps_logits():
    shapes = custom_arch_official_shapes(CMT, SMALL_ARCH, img_size=64)
    model = CMTClassifier(
        SMALL_ARCH, num_classes=10, fc_dim=64, pretrain_img_size=64)
    model.load_state_dict(random_official_state_dict(shapes, seed=2))
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        got = model.fuse()(x)
    assert relative_error(got, expected) < 2e-5  # measured: 1.6e-6
    assert isinstance(model.head.norm, nn.Identity)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_blockwise_attention_backward_matches_autograd(dtype, monkeypatch):
    monkeypatch.setattr(attention, 'BLOCK_ELEMENTS', 3000)  # many blocks
    g = torch.Generator().manual_seed(0)
    B, heads, N, Nk, d = 2, 3, 300, 40, 8
    q = torch.randn(B, N, heads, d, generator=g, dtype=dtype).transpose(1, 2)
    k, v = (
        torch.randn(B, heads, Nk, d, generator=g, dtype=dtype)
        for _ in range(2))
    bias = torch.randn(heads, N, Nk, generator=g, dtype=dtype)
    inputs = [t.requires_grad_() for t in (q, k, v, bias)]
    out = attention.biased_attention(q, k, v, bias, 0.3)
    cotangent = torch.randn(out.shape, generator=g, dtype=dtype)
    grads = torch.autograd.grad(out, inputs, cotangent)
    ref = torch.softmax(q @ k.transpose(-2, -1) * 0.3 + bias, -1) @ v
    ref_grads = torch.autograd.grad(ref, inputs, cotangent)
    # measured: float32 outputs 4.1e-7, gradients 1.1e-6; float64 9.3e-16
    # and 1.4e-15
    float32 = dtype == torch.float32
    out_tol, grad_tol = (5e-6, 2e-5) if float32 else (2e-14, 2e-14)
    assert relative_error(out, ref) < out_tol
    for grad, ref_grad in zip(grads, ref_grads):
        assert grad.shape == ref_grad.shape
        assert relative_error(grad, ref_grad) < grad_tol


def test_inference_attention_takes_the_fused_kernel_with_a_parameter_bias():
    """Under no_grad, a bias that requires grad (the stored parameter, at
    the pre-training size) must not send SDPA to its unfused math path."""
    from torch.profiler import profile
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 96, 3, 16, generator=g).transpose(1, 2)
    k, v = (torch.randn(2, 3, 24, 16, generator=g) for _ in range(2))
    bias = nn.Parameter(torch.randn(3, 96, 24, generator=g))
    with torch.no_grad(), profile() as prof:
        out = attention.biased_attention(q, k, v, bias, 0.25)
    ops = {event.key for event in prof.key_averages()}
    if HAS_CPU_FLASH_ATTENTION_MASK:
        assert 'aten::_scaled_dot_product_flash_attention_for_cpu' in ops
        assert 'aten::_scaled_dot_product_attention_math' not in ops
    else:  # torch < 2.3 has no masked CPU kernel: the exact math path
        assert 'aten::_scaled_dot_product_attention_math' in ops
    with torch.no_grad():
        expected = torch.softmax(q @ k.transpose(-2, -1) * 0.25 + bias, -1) @ v
    assert relative_error(out, expected) < 5e-6  # measured: 4.0e-7


def test_training_keeps_attention_matrices_out_of_autograd():
    """In training, no saved tensor has the size of an attention matrix."""
    model = CMT(SMALL_ARCH, pretrain_img_size=64).train()
    x = torch.randn(2, 3, 128, 128)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(x)
    # stage 1: 2 images x 1 head x (32*32 queries) x (8*8 keys); the largest
    # other saved tensor is the input, 2 x 3 x 128 x 128
    attention_matrix = 2 * 1 * 32 * 32 * 8 * 8
    assert max(sizes) == 2 * 3 * 128 * 128 < attention_matrix
    sum(o.mean() for o in outs).backward()
    assert all(s.relative_position_bias.grad.abs().sum() > 0
               for s in model.stages)


def test_export_backbone_onnx_dynamic_axes(tmp_path):
    import export_backbone_onnx

    from mmcmt.engine import UsageError
    out = str(tmp_path / 'cmt.onnx')
    results = export_backbone_onnx.main([
        out, '--arch', 'tiny', '--shape', '96', '160', '--check-shape', '2',
        '100', '75'
    ])
    assert osp.getsize(out) > 1e6
    assert [shape for shape, _ in results] == [(1, 3, 96, 160),
                                               (2, 3, 100, 75)]
    for _, errors in results:  # absolute; measured: 6.1e-5 (outputs to 80)
        assert len(errors) == 4 and max(errors) < 1e-3
    with pytest.raises(UsageError, match='exists'):
        export_backbone_onnx.main([out, '--arch', 'tiny'])
    small = str(tmp_path / 'small.onnx')
    with pytest.raises(UsageError, match='--shape: .* at least 32x32'):
        export_backbone_onnx.main([small, '--shape', '16', '64'])
    with pytest.raises(UsageError, match='--check-shape: .* got 64x31'):
        export_backbone_onnx.main([small, '--check-shape', '1', '64', '31'])
    assert not osp.exists(small)


COMPILE_CHECK = """
import torch
from test_speed import loaded_model
from helpers import relative_error
model = loaded_model()
x = torch.randn(1, 3, 64, 96)
with torch.no_grad():
    expected = model(x)
    got = torch.compile(model)(x)
print('max relative error', max(relative_error(a, b)
                                for a, b in zip(got, expected)))
"""


def test_torch_compile_matches_eager():
    """Inductor compiles the backbone and computes the same maps. In a
    subprocess: inductor's worker pool and caches stay out of the other
    tests' timings."""
    result = subprocess.run([sys.executable, '-c', COMPILE_CHECK],
                            capture_output=True,
                            text=True,
                            cwd=osp.dirname(osp.abspath(__file__)),
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    error = float(result.stdout.split('max relative error')[-1])
    assert error < 1e-5  # measured: 8.0e-7


@pytest.mark.parametrize(
    'batch,height,row_bytes,budget,expected',
    [
        (8, 56, 100, 5600, [(1, 56)] * 8),  # one image per piece
        (3, 24, 10, 500, [(1, 24), (2, 24)]),  # two images at most
        (1, 200, 10, 260, [(1, 25)] * 8),  # bands of 26 rows at most, even
        (2, 10, 10, 1, [(1, 3), (1, 3), (1, 4)] * 2),  # 4 rows if none fit
    ])
def test_map_pieces_cover_every_row_once(monkeypatch, batch, height, row_bytes,
                                         budget, expected):
    from mmcmt.models.utils import map_pieces
    monkeypatch.setattr(map_pieces, 'PIECE_BYTES', budget)
    pieces = list(map_pieces.map_pieces(batch, height, row_bytes))
    covered = torch.zeros(batch, height, dtype=torch.int)
    for images, rows in pieces:
        covered[images, rows] += 1
    assert covered.eq(1).all()
    assert [(images.stop - images.start, rows.stop - rows.start)
            for images, rows in pieces] == expected


@pytest.mark.parametrize('budget', [1, 40_000, 250_000])
def test_irffn_computed_in_pieces_matches(monkeypatch, budget):
    """The eval path's IRFFN, a few images or a band of rows at a time
    (each band's depthwise convolution fed one row of each neighbour),
    computes what the whole map and the plain layers compute."""
    from mmcmt.models.backbones import cmt_inference
    from mmcmt.models.utils import forms, map_pieces
    model = loaded_model()
    x = torch.randn(3, 3, 96, 128)  # stage 1: 24 x 32 grid, 4 KB a row
    pieces = []
    real = map_pieces.map_pieces
    monkeypatch.setattr(cmt_inference, 'map_pieces',
                        lambda *a: pieces.append(list(real(*a))) or pieces[-1])
    with torch.no_grad():
        monkeypatch.setattr(map_pieces, 'PIECE_BYTES', 1 << 40)
        whole = model(x)
        assert all(len(p) == 1 for p in pieces)
        pieces.clear()
        monkeypatch.setattr(map_pieces, 'PIECE_BYTES', budget)
        got = model(x)
        with monkeypatch.context() as m:
            m.setattr(forms, 'form_now', lambda *args: None)
            plain = model(x)
    stage1 = pieces[0]
    if budget == 250_000:  # two 96 KB images at most, whole
        assert stage1 == [(slice(0, 1), slice(0, 24)),
                          (slice(1, 3), slice(0, 24))]
    else:  # each image in bands of 4 (budget 1) or 8 rows
        rows = 4 if budget == 1 else 8
        assert stage1 == [(slice(i, i + 1), slice(r, r + rows))
                          for i in range(3) for r in range(0, 24, rows)]
    for out, ref, base in zip(got, whole, plain):
        # the pieces' rows by the same kernels: measured equal to the bit;
        # 1e-6 (8 float32 epsilons) lets a GEMM sum a piece's rows in
        # another order on another CPU
        assert relative_error(out, ref) < 1e-6
        assert relative_error(out, base) < 2e-5  # measured: 1.5e-6


def test_eval_inference_path_matches_and_follows_weight_changes(monkeypatch):
    """The eval-mode path (GELU inside the convolutions, BatchNorms folded
    or applied in place, cached) computes what the plain layers compute,
    also after the weights change under it."""
    from mmcmt.models.backbones import cmt_inference
    from mmcmt.models.utils import forms, fused_ops
    model = loaded_model()
    x = torch.randn(2, 3, 72, 100)
    calls = []
    real = fused_ops.batch_norm_
    monkeypatch.setattr(cmt_inference, 'batch_norm_',
                        lambda *a: calls.append(1) or real(*a))

    def plain():
        with monkeypatch.context() as m:
            m.setattr(forms, 'form_now', lambda *args: None)
            return model(x)

    with torch.no_grad():
        for step in range(2):
            got, expected = model(x), plain()
            for out, ref in zip(got, expected):  # measured: 2.2e-6
                assert relative_error(out, ref) < 5e-5
            # change every BatchNorm and convolution in place: the cached
            # folded weights must follow
            for module in model.modules():
                if isinstance(module, _BatchNorm):
                    module.running_mean.add_(0.1)
                    module.weight.mul_(1.5)
                elif isinstance(module, nn.Conv2d):
                    module.weight.mul_(0.9)
    assert calls  # the in-place BatchNorms ran
    stem_bn = model.stem[0].norm
    assert stem_bn.__dict__['_derived_weights']  # cached
    # gradients and training never take the path
    model.train()
    y = model(x)
    assert all(out.requires_grad for out in y)
