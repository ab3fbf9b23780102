"""Seeded fuzzing of the CMT backbone's forward pass.

A few hundred random cases (fixed seed, so a failure reproduces): a small
custom arch for most of them, up to 1400-pixel sides, and a few small cases
of each released arch. Batch 1-3, heights and widths from 32 to 1400 (primes
among them), train and eval mode, channels-last and contiguous inputs,
float32 and bfloat16 autocast. Each case: no exception, outputs of
``ceil(H/s) x ceil(W/s)``, no NaN or Inf, and in eval mode the output equals
the zero-padded (to a multiple of 32) input's output, cropped. Then what the
forward rejects (non-float inputs, empty batches) and what it does with NaN
(propagates it, no check).
"""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from mmcmt.models import CMT

FUZZ_ARCH = dict(
    embed_dims=[8, 16, 24, 32],
    depths=[1, 1, 1, 1],
    num_heads=[1, 2, 3, 4],
    mlp_ratios=2,
    sr_ratios=[8, 4, 2, 1],
    stem_channels=8)
PRIMES = [37, 41, 53, 67, 97, 131, 163, 211, 257, 331, 509, 701, 1009, 1399]
NUM_CASES = 300  # of FUZZ_ARCH
RELEASED_CASES = 3  # per released arch


def _side(rng, big):
    if rng.random() < 0.25:
        return rng.choice([p for p in PRIMES if big or p < 300])
    if big:
        return rng.randint(300, 1400)
    return rng.randint(32, 300)


def _cases():
    rng = random.Random(20261122)
    cases = []
    for i in range(NUM_CASES):
        big = rng.random() < 0.06  # large sides: batch 1, eval or train
        H, W = _side(rng, big), _side(rng, big)
        if i < 4:  # the extremes, always
            H, W = [(32, 32), (1400, 1400), (32, 1399), (1399, 37)][i]
            big = True
        batch = 1 if big else rng.randint(1, 3)
        cases.append(('fuzz', batch, H, W, rng.random() < 0.4, rng.random()
                      < 0.5, rng.random() < 0.3))
    for arch in ('tiny', 'xs', 'small', 'base'):
        for _ in range(RELEASED_CASES):
            cases.append((arch, rng.randint(1, 2), rng.randint(32, 130),
                          rng.randint(32, 130), rng.random()
                          < 0.4, rng.random() < 0.5, rng.random() < 0.3))
    return cases


def _models():
    torch.manual_seed(0)
    models = {'fuzz': CMT(FUZZ_ARCH, pretrain_img_size=64)}
    for arch in ('tiny', 'xs', 'small', 'base'):
        models[arch] = CMT(arch)
    for model in models.values():
        model.init_weights()
    return models


def _run(model, x, bf16):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        return model(x)


@pytest.fixture
def one_thread():
    """The cases are small: on one thread they take about 45 s of CPU time.
    With two OpenMP threads on a machine shared with another job, threads
    wait at every operator's barrier for a descheduled partner: measured,
    13x the CPU time and 10x the wall time on the first 60 cases."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fuzz_forward(one_thread):
    """All cases in one test (so that the models are built once); the first
    failing case is named in the assertion message."""
    models = _models()
    g = torch.Generator().manual_seed(0)
    for case in _cases():
        name, batch, H, W, train, channels_last, bf16 = case
        model = models[name].train(train)
        x = torch.randn(batch, 3, H, W, generator=g)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if train and batch * math.ceil(H / 32) * math.ceil(W / 32) == 1:
            # training-mode BatchNorm over a single value per channel (the
            # stride-32 map of one image of at most 32x32): torch's error
            with pytest.raises(
                    ValueError, match='more than 1 value per '
                    'channel'):
                _run(model, x, bf16)
            continue
        backward = train and H * W <= 160 * 160
        with torch.set_grad_enabled(backward):
            outs = _run(model, x, bf16)
        assert len(outs) == 4, case
        for i, (out, dims) in enumerate(zip(outs, model.embed_dims)):
            s = 4 * 2**i
            assert out.shape == (batch, dims, math.ceil(H / s),
                                 math.ceil(W / s)), case
            assert out.dtype == (torch.bfloat16
                                 if bf16 else torch.float32), case
            assert torch.isfinite(out).all(), case
        if backward:
            sum(o.float().square().mean() for o in outs).backward()
            assert all(
                torch.isfinite(p.grad).all() for p in model.parameters()
                if p.grad is not None)
            model.zero_grad(set_to_none=True)
        if not train:
            padded = F.pad(x, (0, -W % 32, 0, -H % 32))
            with torch.no_grad():
                ref = _run(model, padded, bf16)
            for out, full in zip(outs, ref):
                assert torch.equal(
                    out, full[..., :out.shape[2], :out.shape[3]]), case


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    model = CMT(FUZZ_ARCH, pretrain_img_size=64)
    model.init_weights()
    return model.eval()


@pytest.mark.parametrize(
    'dtype', [torch.uint8, torch.int64, torch.bool, torch.complex64])
def test_non_float_input_is_a_clear_error(model, dtype):
    x = torch.zeros(1, 3, 64, 64, dtype=dtype)
    with pytest.raises(TypeError, match=f'floating-point input, got {dtype}'):
        model(x)


def test_nan_in_gives_nan_out(model):
    """No check for NaN (a data-dependent test on every forward, which
    torch.compile and the ONNX export cannot follow): a NaN pixel gives NaN
    outputs, no exception. Attention spreads it: every output is NaN from
    the stage whose keys include its position."""
    x = torch.randn(1, 3, 64, 96)
    x[0, 1, 10, 20] = float('nan')
    with torch.no_grad():
        outs = model(x)
    for out in outs:
        assert torch.isnan(out).any()
    clean = model(torch.nan_to_num(x))
    assert all(torch.isfinite(o).all() for o in clean)


@pytest.mark.parametrize('train', [False, True])
def test_empty_batch_is_a_clear_error(model, train):
    """A batch of 0 images is refused with a clear message (without the
    check, the attention's reshapes fail with an obscure error)."""
    model.train(train)
    try:
        with pytest.raises(
                ValueError,
                match=r'empty batch \(input shape '
                r'\(0, 3, 70, 100\)\)'):
            model(torch.zeros(0, 3, 70, 100))
    finally:
        model.eval()
