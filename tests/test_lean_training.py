"""The memory-lean training forms (:mod:`mmcmt.models.backbones.
cmt_lean_training`) compute the plain layers' outputs, gradients and
running statistics, in float64, float32 and under autocast, and keep fewer
bytes (under SyncBN: test_lean_training_syncbn.py)."""
import sys

import pytest
import torch
from cmt_helpers import (AMP, CP_ARCH, TINY,
                         assert_autocast_error_below_autocasts,
                         assert_close_float64, randomize_norms,
                         same_models_with_random_norms, saved_bytes)

from mmcmt.models import CMT
from mmcmt.utils import relative_error


@pytest.mark.parametrize('kwargs', [
    dict(drop_path_rate=0.2),
    dict(norm_eval=True),
    dict(frozen_stages=2),
    dict(with_cp=True),
])
def test_lean_training_form_is_the_plain_layers(kwargs):
    """The memory-lean training forms (the IRFFN's, one hidden map kept
    instead of six, with norm2; the LPU, norm1 and the attention's
    projections; the stem's; the relative position bias computed again in
    the backward pass) compute the plain layers' outputs, every gradient
    and the same BatchNorm running statistics (float64, to rounding:
    :data:`FLOAT64_TOL`; measured here: outputs 6.9e-15, gradients 3.7e-14,
    statistics 1.1e-15), and keep fewer bytes for the backward pass."""
    torch.manual_seed(0)
    lean = CMT(
        CP_ARCH, pretrain_img_size=64, lean_training=True, **kwargs).double()
    lean.init_weights()
    randomize_norms(lean)
    plain = CMT(
        CP_ARCH, pretrain_img_size=64, lean_training=False, **kwargs).double()
    plain.load_state_dict(lean.state_dict())
    x = torch.rand(2, 3, 96, 130, dtype=torch.float64)
    results = []
    for model in (lean, plain):
        model.train()
        torch.manual_seed(7)  # same drop-path draws
        inp = x.clone().requires_grad_()
        saved, outs = saved_bytes(model, inp)
        loss = sum(
            (o * torch.arange(o.numel()).view_as(o).cos()).sum() for o in outs)
        loss.backward()
        grads = [inp.grad] + [p.grad for p in model.parameters()]
        results.append((saved, (outs, grads, list(model.buffers()))))
    (saved_lean, lean_step), (saved_plain, plain_step) = results
    for (name, a), b in zip(lean.named_parameters(), plain.parameters()):
        assert (a.grad is None) == (b.grad is None), name
    assert_close_float64(*((o, [g for g in gs if g is not None], b)
                           for o, gs, b in (lean_step, plain_step)))
    # measured: 0.36 (0.41 with frozen_stages=2); 0.49 (0.55) with the lean
    # IRFFN and the recomputed bias alone
    if not kwargs.get('with_cp'):  # with_cp keeps the blocks' inputs only
        assert saved_lean < 0.5 * saved_plain, (saved_lean, saved_plain)


@pytest.mark.parametrize(
    'kwargs', [dict(), dict(norm_eval=True)],
    ids=lambda kwargs: ','.join(kwargs) or 'default')
def test_lean_training_form_in_float32_is_as_accurate(kwargs):
    """In float32 the lean IRFFN folds each BatchNorm into the layer after
    it (its output never computed): outputs and gradients then round
    differently from the plain layers', and are as close to the float64
    computation as theirs.

    The two errors are sums of as many roundings of the same sizes (a
    folded product rounds once where the plain layers round the product and
    the BatchNorm's scale), so their ratio is about 1, and varies from seed
    to seed as a ratio of two random sums does. Over 30 seeds with each
    kernel set (module docstring of cmt_helpers.py): outputs mean 1.000 sd
    0.002 (0.988 and 0.016 with norm_eval), gradients mean 1.002 sd 0.028
    (0.975 and 0.091 with norm_eval, where the errors are smallest; 0.79 to
    1.24). Bound, the mean plus five standard deviations: outputs 1.1,
    gradients 1.5 (a fold in a lower precision would be hundreds of times
    as far). Running statistics: ten times the largest difference measured
    (2.7e-7): 5e-6."""
    # lean, plain, plain in float64
    models = same_models_with_random_norms([True, False, False], **kwargs)
    models[2].double()
    x = torch.rand(2, 3, 96, 130, dtype=torch.float64)
    results = []
    for model in models:
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
    for lean, plain, exact, bound in ((o1, o2, o64, 1.1), (g1, g2, g64, 1.5)):
        ratio = (lean - exact).norm() / (plain - exact).norm()
        print(f'{kwargs}: lean / plain error {ratio:.3f}', file=sys.stderr)
        assert ratio <= bound, ratio
    assert relative_error(b1, b2) < 5e-6


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
def test_lean_training_form_under_autocast(dtype, kwargs):
    """Under autocast (``--amp``) the lean form computes what the plain
    layers compute under the same autocast: the same outputs to the bit
    (the same operations in the same dtypes), running statistics to the
    bit, and gradients that differ only by the rounding of the recomputed
    BatchNorm outputs (another kernel, then rounded to the low precision),
    which stays well below autocast's own rounding
    (:data:`AUTOCAST_RATIO`). It keeps fewer bytes."""
    # lean, plain, plain in float32
    models = same_models_with_random_norms([True, False, False], **kwargs)
    x = torch.rand(2, 3, 96, 130)
    results = []
    for index, model in enumerate(models):
        model.train()
        torch.manual_seed(7)  # same drop-path draws
        inp = x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=dtype, enabled=index < 2):
            saved, outs = saved_bytes(model, inp)
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
    assert_autocast_error_below_autocasts(g1, g2, g32, f'{dtype} {kwargs}')
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
    model = CMT(
        dict(TINY, depths=[2, 3, 2, 2]),
        pretrain_img_size=64,
        lean_training=lean)
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
    model = CMT(TINY, pretrain_img_size=64, lean_training=True)
    outs = model(torch.rand(1, 3, 96, 64))
    with torch.no_grad():
        model.stages[0].relative_position_bias.add_(1)
    with pytest.raises(RuntimeError, match='modified by an inplace'):
        sum(o.sum() for o in outs).backward()


def test_lean_forms_step_aside_for_other_norms():
    """The block's and the stem's lean forms take torch's LayerNorm and
    BatchNorm2d / SyncBatchNorm; with other norms those layers train
    through their plain layers, and the model computes what it computes
    through its plain layers (float64: to rounding, :data:`FLOAT64_TOL`;
    measured: outputs 3.2e-15, gradients 2.0e-15)."""
    from mmcmt.models.backbones import cmt_lean_training as lean

    class OwnLayerNorm(torch.nn.LayerNorm):
        pass

    torch.manual_seed(0)
    model = CMT(TINY, pretrain_img_size=64, lean_training=True).double()
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
    plain = CMT(TINY, pretrain_img_size=64, lean_training=False).double()
    plain.stem[0].norm = torch.nn.GroupNorm(1, 8).double()
    plain.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    results = []
    for net in (model, plain):
        outs = net(x)
        sum(o.sum() for o in outs).backward()
        results.append(
            (outs, [p.grad for p in net.parameters()], list(net.buffers())))
    assert_close_float64(*results)
