"""The relative position bias at any input size: resized as the function it
samples, once per stage per forward, kept in eval mode, loaded from another
grid, factored for export, given as inputs."""
import math

import pytest
import torch
from cmt_helpers import TINY

from mmcmt.models import CMT
from mmcmt.models.utils import resize_relative_position_bias
from mmcmt.utils import relative_error


def test_bias_used_unchanged_at_pretrain_size_and_resized_elsewhere():
    model = CMT(TINY, pretrain_img_size=64).eval()
    stage = model.stages[1]
    assert stage.bias_for((8, 8)) is stage.relative_position_bias
    with torch.no_grad():
        resized = stage.bias_for((12, 8))
        assert resized.shape == (2, 96, 6)
        assert stage.bias_for((12, 8)) is resized  # eval cache hit
        other = stage.bias_for((8, 12))
        assert other.shape == (2, 96, 6) and stage.bias_for((8, 12)) is other
        # an in-place update of the parameter invalidates the cache
        stage.relative_position_bias.add_(1)
        assert stage.bias_for((8, 12)) is not other
    model.train()  # frees the kept bias
    assert stage.bias_for((12, 8)).requires_grad
    model.eval()
    with torch.no_grad():
        assert stage.bias_for((8, 12)) is not other


def test_bias_resized_once_per_stage_per_forward(monkeypatch):
    from mmcmt.models.utils import relative_position
    calls = []
    real = relative_position.resize_relative_position_bias
    monkeypatch.setattr(relative_position, 'resize_relative_position_bias',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model = CMT(dict(TINY, depths=[2, 3, 2, 2]), pretrain_img_size=64)
    model(torch.rand(1, 3, 96, 64))  # training: once per stage
    assert len(calls) == 4
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 96, 64))
        model(torch.rand(1, 3, 96, 64))  # cached
    assert len(calls) == 8


def _smooth_bias(qy, qx, ky, kx, head=0):
    """A smooth, low-frequency function of (query row, query column, key
    row, key column), normalised coordinates in [0, 1]; different in every
    argument, so that swapping rows and columns or queries and keys changes
    it."""
    return ((1 + 0.5 * head) * torch.sin(2.1 * qy + 0.3) +
            0.6 * torch.cos(1.7 * qx - 0.4) + 0.8 * (ky - 0.3)**2 - 0.5 * kx +
            0.4 * qy * kx - 0.3 * qx * ky + 0.2 * head)


def _centres(n):
    """Normalised pixel centres of an n-pixel side: (i + 0.5) / n."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


def _sample_bias(query, key, heads=2, swap=None):
    """``(heads, Hq*Wq, Hk*Wk)``: :func:`_smooth_bias` at the pixel centres
    of the query and key grids (row-major). ``swap`` evaluates a wrong
    reading of the axes instead: 'hw' (rows and columns swapped), 'qk'
    (queries and keys swapped)."""
    qy, qx = torch.meshgrid(
        _centres(query[0]), _centres(query[1]), indexing='ij')
    ky, kx = torch.meshgrid(_centres(key[0]), _centres(key[1]), indexing='ij')
    q = [c.reshape(-1, 1) for c in (qy, qx)]
    k = [c.reshape(1, -1) for c in (ky, kx)]
    if swap == 'hw':
        q, k = q[::-1], k[::-1]
    elif swap == 'qk':
        q, k = [c.reshape(1, -1) for c in (ky, kx)], \
            [c.reshape(-1, 1) for c in (qy, qx)]
    return torch.stack([_smooth_bias(*q, *k, h) for h in range(heads)])


#: Tolerance on the resized bias against f (which spans about 0.1..2.6).
#: PyTorch's bicubic kernel (a = -0.75, align_corners=False) reproduces
#: constants but not linear functions: on a slope s over pixels of size h it
#: errs by up to 0.13 s h inside the grid, and at the border, where the new
#: grid's outer centres lie outside the old grid's and the taps are clamped
#: (constant extrapolation), by up to 0.1 s h for these sizes. With h = 1/7
#: and f's slopes (up to about 3.5 per axis, four axes) that allows about
#: 0.1; measured: at most 0.056 (0.040 away from the borders). A resize that
#: swapped rows and columns or queries and keys is off by more than 1.2.
RESIZE_TOL = 0.1


@pytest.mark.parametrize('dst_query, dst_key', [((10, 6), (5, 3)),
                                                ((5, 9), (11, 4))])
def test_resized_bias_samples_the_same_function(dst_query, dst_key):
    """Resizing is checked against the function the bias samples, not
    against mmcmt's own resize: a bias sampled from a known smooth f at the
    7x7 pre-training grids' pixel centres, resized to non-square query and
    key grids, equals f at the new grids' centres."""
    src = (7, 7)
    bias = _sample_bias(src, src).float()
    resized = resize_relative_position_bias(bias, src, src, dst_query,
                                            dst_key).double()
    expected = _sample_bias(dst_query, dst_key)
    assert resized.shape == expected.shape
    error = (resized - expected).abs().max().item()
    assert error < RESIZE_TOL
    for swap in ('hw', 'qk'):  # what a resize with swapped roles would give
        wrong = _sample_bias(dst_query, dst_key, swap=swap)
        assert (wrong - expected).abs().max() > 0.5
        assert (resized - wrong).abs().max() > 5 * RESIZE_TOL


@pytest.mark.parametrize('dst_query, dst_key', [((10, 6), (5, 3)),
                                                ((7, 7), (7, 7)),
                                                ((5, 9), (11, 4))])
def test_factored_bias_equals_resized_bias(dst_query, dst_key):
    """The factors of the exported graphs (rows @ cols.T, never formed)
    equal the dense resize, and attention with them as extra channels of q
    and k equals attention with the dense bias, to float32's rounding: ten
    times the largest relative error measured (10 seeds, two kernel sets,
    as cmt_helpers.py says): the product 3.7e-7, the attention 1.1e-6."""
    from mmcmt.models.utils.attention import (biased_attention,
                                              factored_biased_attention)
    from mmcmt.models.utils.relative_position import \
        factored_relative_position_bias
    src = (7, 7)
    bias = torch.randn(2, 49, 49)
    rows, cols = factored_relative_position_bias(bias, src, src, dst_query,
                                                 dst_key)
    dense = resize_relative_position_bias(bias, src, src, dst_query, dst_key)
    assert rows.shape == (2, math.prod(dst_query), 49)
    assert cols.shape == (math.prod(dst_key), 49)
    assert relative_error(rows @ cols.T, dense) < 5e-6
    q = torch.randn(3, 2, math.prod(dst_query), 8)
    k, v = torch.randn(2, 3, 2, math.prod(dst_key), 8)
    with torch.no_grad():
        expected = biased_attention(q, k, v, dense, 8**-0.5)
        got = factored_biased_attention(q, k, v, rows, cols, 8**-0.5)
    assert relative_error(got, expected) < 2e-5


@pytest.mark.parametrize('dst_query, dst_key', [((10, 6), (5, 3)),
                                                ((7, 7), (5, 9)),
                                                ((12, 4), (7, 7))])
def test_resize_backward_is_the_resize_gradient(dst_query, dst_key):
    """The resize's gradient by its transposed products (the bias's lean
    training form) is autograd's through the resize (float64, to rounding:
    the same products in another order; ten times the largest relative error
    measured, 2.8e-16)."""
    from mmcmt.models.utils.relative_position import \
        resize_relative_position_bias_backward
    src = (7, 7)
    bias = torch.randn(2, 49, 49, dtype=torch.float64, requires_grad=True)
    resized = resize_relative_position_bias(bias, src, src, dst_query, dst_key)
    grad = torch.randn_like(resized)
    expected, = torch.autograd.grad(resized, bias, grad)
    got = resize_relative_position_bias_backward(grad, bias.detach(), src, src,
                                                 dst_query, dst_key)
    assert relative_error(got, expected) < 5e-15


def test_forward_resizes_bias_to_the_running_grid():
    """In a forward at 320x192 the attention of stage 2 (stride 16, sr 2,
    pre-training grid 14x14) gets the bias of f at its 20x12 query and 10x6
    key grids' pixel centres."""
    from mmcmt.models.backbones import cmt
    model = CMT(TINY, pretrain_img_size=224).eval()
    stage = model.stages[2]
    with torch.no_grad():
        stage.relative_position_bias.copy_(_sample_bias((14, 14), (7, 7)))
    seen = []
    real = cmt.biased_attention
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            cmt, 'biased_attention',
            lambda q, k, v, bias, scale: seen.append(bias) or real(
                q, k, v, bias, scale))
        with torch.no_grad():
            model(torch.rand(1, 3, 320, 192))
    biases = [b for b in seen if b.shape == (2, 20 * 12, 10 * 6)]
    assert len(biases) == TINY['depths'][2]
    expected = _sample_bias((20, 12), (10, 6))
    assert (biases[0].double() - expected).abs().max() < RESIZE_TOL
    assert (_sample_bias(
        (20, 12),
        (10, 6), swap='hw') - biases[0].double()).abs().max() > 5 * RESIZE_TOL


def test_load_state_dict_resizes_bias_saved_at_another_grid():
    """A checkpoint saved with another pretrain_img_size (say, by a detector
    trained at another resolution) loads through plain load_state_dict."""
    src = CMT(TINY, pretrain_img_size=96)
    dst = CMT(TINY, pretrain_img_size=64)
    dst.load_state_dict(src.state_dict())
    for i, (s, d) in enumerate(zip(src.stages, dst.stages)):
        stride, sr = 4 * 2**i, TINY['sr_ratios'][i]
        src_q, dst_q = (96 // stride, ) * 2, (64 // stride, ) * 2
        expected = resize_relative_position_bias(
            s.relative_position_bias.detach(), src_q, (src_q[0] // sr, ) * 2,
            dst_q, (dst_q[0] // sr, ) * 2)
        # the hook's resize is this one, of the same values: to the bit
        assert torch.equal(d.relative_position_bias.detach(), expected)


def test_position_biases_given_as_inputs():
    """forward(x, position_biases(x)), as a deployed graph takes them,
    computes forward(x); a wrong count is refused."""
    model = CMT(arch=TINY).eval()
    x = torch.randn(2, 3, 70, 101)
    with torch.no_grad():
        expected = model(x)
        biases = [b.clone() for b in model.position_biases(x)]
        model(torch.randn(1, 3, 64, 64))  # another size in the bias cache
        got = model(x, biases)
    # (grid of the input padded to 96x128: 24x32 at stride 4)
    assert [tuple(b.shape) for b in biases] == [
        (h, 24 * 32 >> 2 * i, (24 >> i) // r * ((32 >> i) // r))
        for i, (h, r) in enumerate(zip(TINY['num_heads'], TINY['sr_ratios']))
    ]
    for a, b in zip(got, expected):  # the same biases: to the bit
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match='one per stage'):
        model(x, biases[:3])
