"""Behaviour of the CMT backbone: shapes, arguments, errors, training
switches and the relative position bias at any input size."""
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from mmcmt.compat import autocast_supported
from mmcmt.models import CMT
from mmcmt.models.utils import resize_relative_position_bias

TINY = dict(
    embed_dims=[8, 16, 24, 32],
    depths=[1, 1, 2, 1],
    num_heads=[1, 2, 2, 4],
    mlp_ratios=2,
    sr_ratios=[8, 4, 2, 1],
    stem_channels=8)


@pytest.mark.parametrize('arch', ['tiny', 'xs', 'small', 'base'])
@pytest.mark.parametrize('size', [(224, 224), (800, 1199), (33, 47), (64, 96)])
def test_output_shapes(arch, size):
    model = CMT(arch).eval()
    H, W = size
    with torch.no_grad():
        outs = model(torch.rand(1, 3, H, W))
    assert len(outs) == 4
    for i, (out, dims) in enumerate(zip(outs, model.embed_dims)):
        s = 4 * 2**i
        assert out.shape == (1, dims, math.ceil(H / s), math.ceil(W / s))
        assert out.is_contiguous()
        assert torch.isfinite(out).all()


def test_arch_aliases_and_settings():
    assert CMT.parse_arch('ti') == CMT.parse_arch('tiny')
    assert CMT.parse_arch('S') == CMT.parse_arch('small')
    assert CMT.parse_arch('b')['embed_dims'] == [76, 152, 304, 608]
    assert CMT('xs').pretrain_img_size == (192, 192)
    assert CMT(TINY, pretrain_img_size=[64, 96]).pretrain_img_size == (64, 96)
    assert CMT('tiny').stages[0].relative_position_bias.shape == (1, 1600, 25)
    assert CMT('small', pretrain_img_size=256).stages[3] \
        .relative_position_bias.shape == (8, 64, 64)
    # one mlp ratio for all stages or a list
    model = CMT(dict(TINY, mlp_ratios=[1, 2, 3, 4]))
    assert [s.blocks[0].ffn.fc1.out_features for s in model.stages] == \
        [8, 32, 72, 128]


def test_out_indices():
    model = CMT(TINY, out_indices=(1, 3), pretrain_img_size=64).eval()
    outs = model(torch.rand(2, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 32]
    assert [o.shape[2] for o in outs] == [8, 2]
    assert CMT(TINY, out_indices=(-1, )).out_indices == (3, )


def test_padding_equals_padded_input():
    """A size that is not a multiple of 32 gives what the zero-padded input
    gives, cropped to ceil(H/s) x ceil(W/s)."""
    model = CMT(TINY, pretrain_img_size=64).eval()
    x = torch.randn(1, 3, 50, 77)
    padded = F.pad(x, (0, 96 - 77, 0, 64 - 50))
    with torch.no_grad():
        outs, ref = model(x), model(padded)
    for i, (out, full) in enumerate(zip(outs, ref)):
        s = 4 * 2**i
        h, w = -(-50 // s), -(-77 // s)
        assert out.shape[-2:] == (h, w)
        torch.testing.assert_close(out, full[..., :h, :w])


@pytest.mark.parametrize(
    'arch, message',
    [('huge', "unknown CMT arch 'huge'; choose one of"),
     (dict(TINY, depths=[1, 1, 1]), "'depths' must list 4 values"),
     ({
         k: v
         for k, v in TINY.items() if k != 'sr_ratios'
     }, "missing ['sr_ratios']"), (dict(TINY, window=7), "unknown ['window']"),
     (dict(TINY, num_heads=[3, 2, 2, 4]), 'not divisible by num_heads'),
     (dict(TINY, sr_ratios=[3, 4, 2, 1]), 'sr_ratios[0]=3 must divide 8'),
     (7, 'arch must be a name or a dict')])
def test_bad_arch_errors(arch, message):
    with pytest.raises((ValueError, TypeError)) as err:
        CMT(arch)
    assert message in str(err.value)
    if isinstance(arch, str):
        for name in ('tiny', 'xs', 'small', 'base', 'ti', 's', 'b'):
            assert repr(name) in str(err.value)


@pytest.mark.parametrize('kwargs, message', [
    (dict(out_indices=(4, )), 'out_indices must be in 0..3'),
    (dict(frozen_stages=5), 'frozen_stages must be in -1..4'),
    (dict(pretrain_img_size=200), 'multiple of 32'),
])
def test_bad_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CMT(TINY, **kwargs)


def test_input_errors():
    model = CMT(TINY)
    with pytest.raises(
            ValueError,
            match=r'\(B, 3, H, W\) input .* got shape '
            r'\(1, 1, 64, 64\)'):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match='at least 32x32 .* got 31x64'):
        model(torch.rand(1, 3, 31, 64))
    with pytest.raises(ValueError, match='got shape'):
        model(torch.rand(3, 64, 64))
    gray = CMT(TINY, in_channels=1).eval()
    assert gray(torch.rand(1, 1, 32, 32))[0].shape == (1, 8, 8, 8)


@pytest.mark.parametrize('frozen_stages', [0, 1, 2, 4])
def test_frozen_stages_frozen_from_construction(frozen_stages):
    model = CMT(TINY, frozen_stages=frozen_stages, pretrain_img_size=64)
    frozen = [model.stem] + list(model.stages[:frozen_stages])
    trainable = list(model.stages[frozen_stages:])

    def check():
        for module in frozen:
            assert all(not p.requires_grad for p in module.parameters())
            assert all(not m.training for m in module.modules())
        for module in trainable:
            assert all(p.requires_grad for p in module.parameters())
            assert all(m.training for m in module.modules())

    check()  # before any train() call: what DDP sees at wrapping time
    model.train()
    check()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # An input that needs a gradient: the backward runs through every stage,
    # the frozen ones too (with frozen_stages=4 nothing else would need one),
    # so parameters that were not frozen would get gradients.
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    outs = model(x)
    sum((o * o).sum() for o in outs).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for module in frozen:
        assert all(p.grad is None for p in module.parameters())
    for module in trainable:
        assert all(p.grad is not None for p in module.parameters())
    for name, value in model.state_dict().items():  # BN statistics too
        in_frozen = name.startswith('stem.') or any(
            name.startswith(f'stages.{i}.') for i in range(frozen_stages))
        if in_frozen:
            assert torch.equal(value, before[name]), name


def test_norm_eval():
    model = CMT(TINY, norm_eval=True, pretrain_img_size=64)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not bn.training for bn in bns)
    assert model.stages[0].blocks[0].norm1.training  # LayerNorm unaffected
    stats = bns[5].running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert torch.equal(stats, bns[5].running_mean)
    model = CMT(TINY, norm_eval=False).train()
    assert all(m.training for m in model.modules())


def test_with_cp_same_outputs_and_gradients():
    torch.manual_seed(1)
    plain = CMT(TINY, drop_path_rate=0.2, pretrain_img_size=64)
    plain.init_weights()
    ckpt = CMT(TINY, drop_path_rate=0.2, pretrain_img_size=64, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 96, 64)  # resized bias inside checkpointed blocks
    results = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(7)  # same drop-path draws
        inp = x.clone().requires_grad_()
        outs = model(inp)
        loss = sum(
            (o * torch.arange(o.numel()).view_as(o).sin()).sum() for o in outs)
        loss.backward()
        results.append(
            (outs, inp.grad, [p.grad.clone() for p in model.parameters()]))
    (o1, gx1, g1), (o2, gx2, g2) = results
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx1, gx2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _saved_bytes(model, x):
    """Bytes of the distinct storages that autograd saves for the backward
    pass during ``model(x)`` (parameters aside), and the outputs. A
    non-reentrant checkpoint saves its inputs through these hooks too (so
    they count); inside it, its own hooks take over and keep nothing."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(x)
    return sum(storages.values()), outs


def _plain_layers(monkeypatch):
    """Training through the plain layers (no memory-lean training form)."""
    from mmcmt.models.utils import forms
    monkeypatch.setattr(forms, '_lean', [False])


CP_ARCH = dict(
    embed_dims=[16, 32, 48, 64],
    depths=[2, 2, 3, 2],
    num_heads=[1, 2, 2, 4],
    mlp_ratios=4,
    sr_ratios=[8, 4, 2, 1],
    stem_channels=8)
# Saved bytes plain / with_cp at 2x3x128x128, measured: 8.5x with nothing
# frozen, 13.1x with frozen_stages=1, 14.2x with 2; with the next stage's
# patch aggregation frozen too, 19.3x and 23.2x (3.1x and 3.3x when blocks
# whose input needs no gradient were not checkpointed).
CP_MIN_FACTOR = 6


@pytest.mark.parametrize('frozen_stages, freeze_downsample', [(-1, False),
                                                              (1, False),
                                                              (2, False),
                                                              (1, True),
                                                              (2, True)])
def test_with_cp_checkpoints(frozen_stages, freeze_downsample, monkeypatch):
    """with_cp really checkpoints: autograd keeps several times fewer bytes
    than the plain layers (as before the IRFFN's lean training form), also
    after frozen stages, and behind a patch aggregation frozen by hand
    (trainable blocks whose input needs no gradient); the gradients are the
    plain model's."""
    kwargs = dict(pretrain_img_size=64, frozen_stages=frozen_stages)
    plain = CMT(CP_ARCH, **kwargs)
    plain.init_weights()
    ckpt = CMT(CP_ARCH, with_cp=True, **kwargs)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 128, 128)
    results = []
    for model in (plain, ckpt):
        if freeze_downsample:
            model.stages[frozen_stages].downsample.requires_grad_(False)
        model.train()
        saved, outs = _saved_bytes(model, x)
        loss = sum(
            (o * torch.arange(o.numel()).view_as(o).cos()).sum() for o in outs)
        loss.backward()
        results.append((saved, outs, [p.grad for p in model.parameters()]))
    (_, o1, g1), (saved_cp, o2, g2) = results
    with monkeypatch.context() as m:  # what the plain layers keep
        _plain_layers(m)
        saved_plain, _ = _saved_bytes(plain, x)
    assert saved_cp * CP_MIN_FACTOR < saved_plain, (saved_plain, saved_cp)
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    trainable = 0
    for (name, param), a, b in zip(plain.named_parameters(), g1, g2):
        assert (a is None) == (b is None) == (not param.requires_grad), name
        if a is not None:
            trainable += 1
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert trainable > 0


def test_with_cp_checkpoints_what_needs_gradients():
    """Every block and stem layer that autograd would keep activations of
    goes through torch's checkpoint, also when its input needs no gradient
    (behind a frozen patch aggregation); frozen ones and inference do
    not."""
    from mmcmt.models.utils import grad_checkpoint
    model = CMT(
        CP_ARCH, pretrain_img_size=64, frozen_stages=1, with_cp=True).train()
    model.stages[1].downsample.requires_grad_(False)
    calls = []
    real = grad_checkpoint.cp.checkpoint

    def spy(function, *args, **kwargs):
        calls.append(function)
        return real(function, *args, **kwargs)

    blocks = [list(stage.blocks) for stage in model.stages]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grad_checkpoint.cp, 'checkpoint', spy)
        model(torch.rand(1, 3, 64, 64))
        assert calls == blocks[1] + blocks[2] + blocks[3]
        calls.clear()
        model(torch.rand(1, 3, 64, 64, requires_grad=True))  # frozen stem
        assert calls == list(model.stem) + sum(blocks, [])
        calls.clear()
        with torch.no_grad():
            model(torch.rand(1, 3, 64, 64))
        assert calls == []


def test_with_cp_updates_bn_statistics_once():
    """A training step with with_cp leaves the BN running statistics the
    plain model's step leaves: torch's checkpoint recomputes the forward in
    the backward pass, where training-mode BatchNorms would update their
    running statistics a second time (num_batches_tracked 2, not 1)."""
    plain = CMT(CP_ARCH, pretrain_img_size=64)
    plain.init_weights()
    ckpt = CMT(CP_ARCH, pretrain_img_size=64, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 128, 128)
    for model in (plain, ckpt):
        model.train()
        sum(o.sum() for o in model(x)).backward()
    expected = plain.state_dict()
    for name, value in ckpt.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)


@pytest.mark.parametrize('kwargs', [
    dict(drop_path_rate=0.2),
    dict(norm_eval=True),
    dict(frozen_stages=2),
    dict(with_cp=True),
])
def test_lean_training_form_is_the_plain_layers(kwargs, monkeypatch):
    """The memory-lean training forms (the IRFFN's, one hidden map kept
    instead of six, with norm2; the LPU, norm1 and the attention's
    projections; the stem's; the relative position bias computed again in
    the backward pass) compute the plain layers' outputs, every gradient
    and the same BatchNorm running statistics (float64: to rounding), and
    keep fewer bytes for the backward pass."""
    torch.manual_seed(0)
    lean = CMT(CP_ARCH, pretrain_img_size=64, **kwargs).double()
    lean.init_weights()
    for module in lean.modules():  # statistics and affines away from 0 / 1
        if isinstance(module, _BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_()
    plain = CMT(CP_ARCH, pretrain_img_size=64, **kwargs).double()
    plain.load_state_dict(lean.state_dict())
    x = torch.rand(2, 3, 96, 130, dtype=torch.float64)
    results = []
    for model in (lean, plain):
        if model is plain:
            _plain_layers(monkeypatch)
        model.train()
        torch.manual_seed(7)  # same drop-path draws
        inp = x.clone().requires_grad_()
        saved, outs = _saved_bytes(model, inp)
        loss = sum(
            (o * torch.arange(o.numel()).view_as(o).cos()).sum() for o in outs)
        loss.backward()
        results.append((saved, outs, inp.grad, model))
    (saved_lean, o1, gx1, _), (saved_plain, o2, gx2, _) = results
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx1, gx2, rtol=1e-10, atol=1e-12)
    # gradients of biases right before a training BatchNorm are 0 up to
    # rounding: compared against the scale of all the gradients
    scale = max(p.grad.abs().max() for p in plain.parameters()
                if p.grad is not None)
    for (name, a), b in zip(lean.named_parameters(), plain.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(
                a.grad, b.grad, rtol=1e-9, atol=1e-12 * scale, msg=name)
    for (name, a), b in zip(lean.named_buffers(), plain.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0, msg=name)
    # measured: 0.36 (0.41 with frozen_stages=2); 0.49 (0.55) with the lean
    # IRFFN and the recomputed bias alone
    if not kwargs.get('with_cp'):  # with_cp keeps the blocks' inputs only
        assert saved_lean < 0.5 * saved_plain, (saved_lean, saved_plain)


def _same_models_with_random_norms(count, **kwargs):
    """``count`` CMTs with the same weights, the BatchNorms' statistics and
    affines away from 0 and 1."""
    torch.manual_seed(0)
    models = [
        CMT(CP_ARCH, pretrain_img_size=64, **kwargs) for _ in range(count)
    ]
    models[0].init_weights()
    for module in models[0].modules():
        if isinstance(module, _BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_()
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())
    return models


@pytest.mark.parametrize(
    'kwargs', [dict(), dict(norm_eval=True)],
    ids=lambda kwargs: ','.join(kwargs) or 'default')
def test_lean_training_form_in_float32_is_as_accurate(kwargs, monkeypatch):
    """In float32 the lean IRFFN folds each BatchNorm into the layer after
    it (its output never computed): outputs and gradients then round
    differently from the plain layers', and are as close to the float64
    computation as theirs: at most 1.1x as far, outputs and gradients
    (measured 1.00 and 1.00; 0.98 and 0.94 with norm_eval); running
    statistics to float32's rounding."""
    models = _same_models_with_random_norms(3, **kwargs)
    models[2].double()
    x = torch.rand(2, 3, 96, 130, dtype=torch.float64)
    results = []
    for index, model in enumerate(models):  # lean, plain, plain in float64
        if index == 1:
            _plain_layers(monkeypatch)
        model.train()
        inp = x.to(next(model.parameters()).dtype).requires_grad_()
        outs = model(inp)
        sum((o * torch.arange(o.numel()).view_as(o).cos()).sum()
            for o in outs).backward()
        grads = [inp.grad] + [
            p.grad for p in model.parameters() if p.grad is not None
        ]
        results.append([
            torch.cat([t.double().flatten() for t in ts])
            for ts in (outs, grads, list(model.buffers()))
        ])
    (o1, g1, b1), (o2, g2, b2), (o64, g64, b64) = results
    for lean, plain, exact in ((o1, o2, o64), (g1, g2, g64)):
        ratio = (lean - exact).norm() / (plain - exact).norm()
        print(f'{kwargs}: lean / plain error {ratio:.3f}', file=sys.stderr)
        assert ratio <= 1.1, ratio
    torch.testing.assert_close(b1, b2, rtol=1e-6, atol=1e-6)


AMP = [
    dtype for dtype in (torch.bfloat16, torch.float16)
    if autocast_supported('cpu', dtype)
]


@pytest.mark.parametrize(
    'kwargs', [
        dict(),
        dict(norm_eval=True),
        dict(frozen_stages=2),
        dict(with_cp=True),
        dict(drop_path_rate=0.2)
    ],
    ids=lambda kwargs: ','.join(kwargs) or 'default')
@pytest.mark.parametrize('dtype', AMP, ids=str)
def test_lean_training_form_under_autocast(dtype, kwargs, monkeypatch):
    """Under autocast (``--amp``) the lean form computes what the plain
    layers compute under the same autocast: the same outputs to the bit
    (the same operations in the same dtypes), running statistics to the
    bit, and gradients that differ only by the rounding of the recomputed
    BatchNorm outputs (another kernel, then rounded to the low precision),
    which stays well below autocast's own rounding: the lean form's
    gradients (all of them, in norm) are at most half as far from the plain
    layers' under autocast as those are from the float32 gradients
    (measured: 0 in bfloat16, up to 0.23 in float16). It keeps fewer
    bytes."""
    models = _same_models_with_random_norms(3, **kwargs)
    x = torch.rand(2, 3, 96, 130)
    results = []
    for index, model in enumerate(models):  # lean, plain, plain in float32
        if index == 1:
            _plain_layers(monkeypatch)
        model.train()
        torch.manual_seed(7)  # same drop-path draws
        inp = x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=dtype, enabled=index < 2):
            saved, outs = _saved_bytes(model, inp)
        loss = sum(
            (o.float() * torch.arange(o.numel()).view_as(o).cos()).sum()
            for o in outs)
        loss.backward()
        grads = [inp.grad] + [
            p.grad for p in model.parameters() if p.grad is not None
        ]
        results.append((saved, outs, grads, model))
    (saved_lean, o1, g1, lean), (saved_plain, o2, g2, plain), \
        (_, _, g32, _) = results
    for a, b in zip(o1, o2):
        assert a.dtype == b.dtype == dtype and torch.equal(a, b)
    for (name, a), b in zip(lean.named_buffers(), plain.buffers()):
        assert torch.equal(a, b), name
    # all gradients together (the input's and the parameters')
    g1, g2, g32 = (
        torch.cat([g.flatten() for g in gs]) for gs in (g1, g2, g32))
    lean_error, amp_error = (g1 - g2).norm(), (g2 - g32).norm()
    print(
        f'{dtype} {kwargs}: lean / autocast error '
        f'{lean_error / amp_error:.3f}',
        file=sys.stderr)
    assert lean_error <= 0.5 * amp_error, (lean_error, amp_error)
    if not kwargs.get('with_cp'):  # with_cp keeps the blocks' inputs only
        assert saved_lean < 0.7 * saved_plain, (saved_lean, saved_plain)


def test_lean_training_form_with_syncbn_and_other_norms():
    """The lean form takes BatchNorm2d and SyncBatchNorm (also under
    autocast); with other norms the IRFFN trains through the plain
    layers."""
    from mmcmt.models.backbones import cmt_lean_training
    model = CMT(CP_ARCH, pretrain_img_size=64).train()
    ffn = model.stages[0].blocks[0].ffn
    tokens = torch.rand(1, 16, 16, 16, requires_grad=True)
    assert cmt_lean_training.irffn(ffn, tokens) is not None
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert cmt_lean_training.irffn(ffn, tokens).dtype == torch.bfloat16
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(ffn.norm1, torch.nn.SyncBatchNorm)
    assert cmt_lean_training.irffn(ffn, tokens) is not None
    ffn.norm1 = torch.nn.GroupNorm(1, ffn.norm1.num_features)
    assert cmt_lean_training.irffn(ffn, tokens) is None


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('dtype,param_dtype',
                         [(torch.float64, torch.float64),
                          (torch.float32, torch.float32),
                          (torch.bfloat16, torch.float32),
                          (torch.bfloat16, torch.bfloat16)])
def test_batch_norm_in_place_is_torchs(dtype, param_dtype, training):
    """The lean forms' BatchNorm written into its own input (no fresh map)
    is torch's ``native_batch_norm`` to the bit: output, saved statistics
    (in the dtype torch allocates them) and running statistics."""
    from mmcmt.models.utils.batch_norm import _native_batch_norm
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 7).to(dtype, memory_format=torch.channels_last)
    weight, bias, mean = (torch.randn(8, dtype=param_dtype) for _ in 'wbm')
    var = torch.rand(8, dtype=param_dtype) + 0.5
    original = mean.clone()
    running, expected_running = (mean, var), (mean.clone(), var.clone())
    expected = torch.native_batch_norm(x, weight, bias, *expected_running,
                                       training, 0.1, 1e-5)
    y = x.clone()
    found = _native_batch_norm(
        y, weight, bias, *running, training, 0.1, 1e-5, out=y)
    assert found[0].data_ptr() == y.data_ptr() and torch.equal(y, expected[0])
    for a, b in zip(found[1:] + running, expected[1:] + expected_running):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert training != torch.equal(mean, original)  # updated in training


def _random_statistics(model):
    """BatchNorm statistics and affines away from 0 / 1."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_()


def _train_step(state, x, kwargs, lean=True, sync=False, amp=None):
    """One training step of CMT (``CP_ARCH``, in ``x``'s dtype) from
    ``state``, in this process or, with ``sync``, as this rank of a process
    group (SyncBatchNorms; ``x`` the whole batch, of which this rank takes
    its part): the outputs, gradients (of the input part and the
    parameters, by name), buffers and the bytes saved for the backward
    pass. Loss: the outputs weighted by a fixed pattern over the whole
    batch."""
    import torch.distributed as dist

    from mmcmt.engine.sync_batch_norm import sync_batch_norm_on_cpu
    from mmcmt.models.utils.forms import lean_training
    rank, world = (dist.get_rank(), dist.get_world_size()) if sync else (0, 1)
    model = CMT(CP_ARCH, pretrain_img_size=64, **kwargs).to(x.dtype)
    model.load_state_dict(state)
    if sync:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.train()
    torch.manual_seed(7 + rank)  # drop-path draws: the same lean or plain
    inp = x.chunk(world)[rank].clone().requires_grad_()
    with lean_training(lean), sync_batch_norm_on_cpu():
        with torch.autocast(
                'cpu', dtype=amp or torch.bfloat16, enabled=amp is not None):
            saved, outs = _saved_bytes(model, inp)
        loss = 0
        for o in outs:
            whole = (o.shape[0] * world, ) + o.shape[1:]
            pattern = torch.arange(math.prod(whole)).view(whole).cos()
            loss = loss + (o.float() * pattern.chunk(world)[rank]).sum()
        loss.backward()
    grads = {'input': inp.grad}
    grads.update((name, p.grad) for name, p in model.named_parameters()
                 if p.grad is not None)
    return dict(
        outs=[o.detach() for o in outs],
        grads=grads,
        buffers=dict(model.named_buffers()),
        saved=saved)


def _train_steps(state, x, steps):
    """:func:`_train_step` for each ``(kwargs, lean, amp)`` of ``steps``,
    as this rank of the process group."""
    return [
        _train_step(state, x, kwargs, lean, sync=True, amp=amp)
        for kwargs, lean, amp in steps
    ]


SYNC_KWARGS = [
    dict(),
    dict(frozen_stages=2),
    dict(with_cp=True),
    dict(norm_eval=True),
]


def test_lean_training_form_under_syncbn_two_processes():
    """SyncBN (``sync_bn`` in the configs): two gloo processes, each with
    half the batch, training through the lean form with SyncBatchNorms,
    compute what one process computes on the whole batch through the plain
    layers with BatchNorms (float64, to rounding): the outputs, every
    gradient (summed over the processes, as DDP reduces them) and the
    running statistics. All of CMT's BatchNorms run as SyncBatchNorms: the
    IRFFN's first two in the lean form, the others as torch's SyncBatchNorm
    computes (:func:`~mmcmt.models.utils.batch_norm.sync_batch_norm`, as
    torch's own refuses CPU tensors). A world of one is BatchNorm."""
    from mmcmt.utils.processes import run_in_processes
    torch.manual_seed(0)
    model = CMT(CP_ARCH, pretrain_img_size=64).double()
    model.init_weights()
    _random_statistics(model)
    state = model.state_dict()
    x = torch.rand(4, 3, 64, 96, dtype=torch.float64)
    steps = [(kwargs, True, None) for kwargs in SYNC_KWARGS]
    for world in (2, 1):
        ranks = run_in_processes(_train_steps, world, state, x, steps)
        for kwargs, *parts in zip(SYNC_KWARGS, *ranks):
            whole = _train_step(state, x, kwargs, lean=False)
            for a, *b in zip(whole['outs'], *(p['outs'] for p in parts)):
                torch.testing.assert_close(
                    torch.cat(b), a, rtol=1e-10, atol=1e-12)
            # gradients of biases right before a training BatchNorm are 0 up
            # to rounding: compared against the scale of all the gradients
            scale = max(g.abs().max() for g in whole['grads'].values())
            for name, g in whole['grads'].items():
                got = [p['grads'][name] for p in parts]
                got = torch.cat(got) if name == 'input' else sum(got)
                torch.testing.assert_close(
                    got,
                    g,
                    rtol=1e-8,
                    atol=1e-11 * scale,
                    msg=f'{name} {kwargs} world {world}')
            for name, buffer in whole['buffers'].items():
                for part in parts:  # every process: the whole batch's
                    torch.testing.assert_close(
                        part['buffers'][name],
                        buffer,
                        rtol=1e-10,
                        atol=0,
                        msg=f'{name} {kwargs} world {world}')


@pytest.mark.parametrize('dtype', AMP, ids=str)
def test_lean_training_form_under_syncbn_autocast_and_the_rest(dtype):
    """SyncBN in two processes, autocast, with_cp, frozen stages, norm_eval
    and drop path together: the lean form computes what the plain layers
    compute in the same run, as under autocast alone (outputs and running
    statistics to the bit, gradients at most half as far from the plain
    layers' as those are from float32's), and keeps fewer bytes."""
    from mmcmt.utils.processes import run_in_processes
    torch.manual_seed(0)
    model = CMT(CP_ARCH, pretrain_img_size=64)
    model.init_weights()
    _random_statistics(model)
    x = torch.rand(4, 3, 64, 96)
    steps = []
    for kwargs in (dict(with_cp=True, frozen_stages=1, drop_path_rate=0.2),
                   dict(norm_eval=True, drop_path_rate=0.2)):
        steps += [(kwargs, True, dtype), (kwargs, False, dtype),
                  (kwargs, False, None)]
    ranks = run_in_processes(_train_steps, 2, model.state_dict(), x, steps)
    for rank in ranks:
        for index in range(0, len(steps), 3):
            lean, plain, full = rank[index:index + 3]
            for a, b in zip(lean['outs'], plain['outs']):
                assert a.dtype == dtype and torch.equal(a, b)
            for name, buffer in plain['buffers'].items():
                assert torch.equal(lean['buffers'][name], buffer), name
            g1, g2, g32 = (
                torch.cat([g.flatten() for g in r['grads'].values()])
                for r in (lean, plain, full))
            lean_error, amp_error = (g1 - g2).norm(), (g2 - g32).norm()
            print(
                f'{dtype} {steps[index][0]}: lean / autocast error '
                f'{lean_error / amp_error:.3f}',
                file=sys.stderr)
            assert lean_error <= 0.5 * amp_error, (lean_error, amp_error)
            if not steps[index][0].get('with_cp'):
                assert lean['saved'] < 0.7 * plain['saved']


@pytest.mark.parametrize('dst_query, dst_key', [((10, 6), (5, 3)),
                                                ((7, 7), (5, 9)),
                                                ((12, 4), (7, 7))])
def test_resize_backward_is_the_resize_gradient(dst_query, dst_key):
    """The resize's gradient by its transposed products (the bias's lean
    training form) is autograd's through the resize (float64, to
    rounding)."""
    from mmcmt.models.utils.relative_position import \
        resize_relative_position_bias_backward
    src = (7, 7)
    bias = torch.randn(2, 49, 49, dtype=torch.float64, requires_grad=True)
    resized = resize_relative_position_bias(bias, src, src, dst_query, dst_key)
    grad = torch.randn_like(resized)
    expected, = torch.autograd.grad(resized, bias, grad)
    got = resize_relative_position_bias_backward(grad, bias.detach(), src, src,
                                                 dst_query, dst_key)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _keeps(model, x):
    """The shapes of the tensors autograd keeps in a forward pass of
    ``model`` (parameters excluded) and its outputs."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes = []

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in params:
            shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(x)
    return shapes, outs


@pytest.mark.parametrize('lean', [True, False])
def test_resized_bias_computed_again_once_per_stage(lean, monkeypatch):
    """In training the resized bias (heads x H*W x h*w per stage, hundreds
    of megabytes at detection sizes) is not kept for the backward pass:
    each stage's is computed again there, once for all its blocks. Through
    the plain layers it is kept and resized once."""
    from mmcmt.models.utils import relative_position
    calls = []
    real = relative_position.resize_relative_position_bias
    monkeypatch.setattr(relative_position, 'resize_relative_position_bias',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    if not lean:
        _plain_layers(monkeypatch)
    model = CMT(dict(TINY, depths=[2, 3, 2, 2]), pretrain_img_size=64)
    x = torch.rand(1, 3, 96, 64)
    biases = [(stage.relative_position_bias.shape[0], 24 * 16 // 4**i,
               24 * 16 // 4**i // stage.sr_ratio**2)
              for i, stage in enumerate(model.stages)]  # at 96x64
    shapes, outs = _keeps(model, x)
    assert len(calls) == 4  # once per stage
    kept = [shape for shape in biases if shape in shapes]
    assert kept == ([] if lean else biases)
    sum(o.sum() for o in outs).backward()
    assert len(calls) == (8 if lean else 4)
    assert all(s.relative_position_bias.grad is not None for s in model.stages)


def test_stored_bias_changed_before_backward_is_an_error():
    """The bias computed again in the backward pass must be the forward
    pass's: a stored bias changed in place in between is an error, as for
    any tensor autograd keeps."""
    model = CMT(TINY, pretrain_img_size=64)
    outs = model(torch.rand(1, 3, 96, 64))
    with torch.no_grad():
        model.stages[0].relative_position_bias.add_(1)
    with pytest.raises(RuntimeError, match='modified by an inplace'):
        sum(o.sum() for o in outs).backward()


def test_lean_forms_step_aside_for_other_norms(monkeypatch):
    """The block's and the stem's lean forms take torch's LayerNorm and
    BatchNorm2d / SyncBatchNorm; with other norms those layers train
    through their plain layers, and the model computes what it computes
    through its plain layers."""
    from mmcmt.models.backbones import cmt_lean_training as lean

    class OwnLayerNorm(torch.nn.LayerNorm):
        pass

    torch.manual_seed(0)
    model = CMT(TINY, pretrain_img_size=64).double()
    block, layer = model.stages[0].blocks[0], model.stem[0]
    tokens = torch.rand(1, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    assert lean.attention_input(block, tokens) is not None
    assert lean.irffn(block.ffn, tokens, block.norm2) is not None
    image = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    assert lean.stem_layer(layer, image) is not None
    for stage in model.stages:
        for module in stage.blocks:
            for name in ('norm1', 'norm2'):
                norm = getattr(module, name)
                own = OwnLayerNorm(norm.normalized_shape, norm.eps).double()
                own.load_state_dict(norm.state_dict())
                setattr(module, name, own)
    layer.norm = torch.nn.GroupNorm(1, layer.norm.num_features).double()
    assert lean.attention_input(block, tokens) is None
    assert lean.irffn(block.ffn, tokens, block.norm2) is None
    assert lean.stem_layer(layer, image) is None
    plain = CMT(TINY, pretrain_img_size=64).double()
    plain.stem[0].norm = torch.nn.GroupNorm(1, 8).double()
    plain.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    results = []
    for net in (model, plain):
        if net is plain:
            _plain_layers(monkeypatch)
        outs = net(x)
        sum(o.sum() for o in outs).backward()
        results.append((outs, [p.grad for p in net.parameters()]))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_drop_path_only_in_training():
    model = CMT(TINY, drop_path_rate=0.5, pretrain_img_size=64)
    model.init_weights()
    rates = [b.drop_path_rate for s in model.stages for b in s.blocks]
    assert rates[0] == 0 and rates[-1] == 0.5 and rates == sorted(rates)
    x = torch.rand(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    model.train()
    for m in model.modules():  # keep BN deterministic between the calls
        if isinstance(m, _BatchNorm):
            m.eval()
    torch.manual_seed(0)
    c = model(x)
    torch.manual_seed(1)
    d = model(x)
    assert not torch.allclose(c[-1], d[-1])
    model.drop_path_rate = 0


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
    and k equals attention with the dense bias."""
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
    assert torch.allclose(rows @ cols.T, dense, atol=1e-5)
    q = torch.randn(3, 2, math.prod(dst_query), 8)
    k, v = torch.randn(2, 3, 2, math.prod(dst_key), 8)
    with torch.no_grad():
        expected = biased_attention(q, k, v, dense, 8**-0.5)
        got = factored_biased_attention(q, k, v, rows, cols, 8**-0.5)
    assert torch.allclose(got, expected, atol=1e-5)


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
        assert d.relative_position_bias.shape == expected.shape
        torch.testing.assert_close(d.relative_position_bias.detach(), expected)


def test_pretrained_argument_is_not_dropped(tmp_path):
    src = CMT(TINY, pretrain_img_size=64)
    path = tmp_path / 'cmt.pth'
    torch.save(src.state_dict(), path)
    model = CMT(TINY, pretrain_img_size=64, pretrained=str(path))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(path))
    model.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    with pytest.raises(ValueError, match='either init_cfg or'):
        CMT(TINY, pretrained=str(path), init_cfg=dict(type='Pretrained'))


def test_default_init_and_other_init_cfg():
    model = CMT(TINY, init_cfg=dict(type='Constant', val=0.5, layer='Linear'))
    model.init_weights()
    assert torch.all(model.stages[0].blocks[0].attn.q.weight == 0.5)
    model = CMT(TINY)
    model.init_weights()
    w = model.stages[3].blocks[0].attn.q.weight  # trunc normal, std .02
    assert 0.017 < w.std() < 0.023 and abs(w.mean()) < 0.003
    conv = model.stages[3].blocks[0].ffn.dwconv  # normal, fan-out scaled
    assert 0.8 < conv.weight.std() / math.sqrt(2 / 9) < 1.2
    assert torch.all(model.stages[0].downsample.norm.weight == 1)


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
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match='one per stage'):
        model(x, biases[:3])
