"""``CMT(lean_training='auto' | True | False)``: the three settings compute
the same outputs and gradients; True takes the lean training forms in every
training call, False never, ``'auto'`` where :func:`lean_forms_pay` says
for the call's size; from a config, and for every model at once."""
import pytest
import torch
from cmt_helpers import (CP_ARCH, TINY, assert_close_float64,
                         same_models_with_random_norms, saved_bytes)

from mmcmt.models import CMT
from mmcmt.models.backbones.cmt_arch import values_kept
from mmcmt.models.utils import forms


@pytest.mark.parametrize('auto_picks', ['lean', 'plain'])
@pytest.mark.parametrize(
    'kwargs', [dict(), dict(with_cp=True, drop_path_rate=0.2)],
    ids=lambda kwargs: ','.join(kwargs) or 'default')
def test_settings_compute_the_same(kwargs, auto_picks, monkeypatch):
    """'auto', True and False: the same outputs, gradients (the input's and
    the parameters') and running statistics (float64, to rounding:
    :data:`FLOAT64_TOL`, as the lean forms against the plain layers); True
    keeps fewer bytes than False, and 'auto' what the forms it picks keep
    (its threshold set to pick each)."""
    threshold = 0 if auto_picks == 'lean' else float('inf')
    monkeypatch.setattr(forms, 'AUTO_LEAN_VALUES_PER_PARAMETER', threshold)
    models = same_models_with_random_norms(['auto', True, False], **kwargs)
    x = torch.rand(2, 3, 96, 130, dtype=torch.float64)
    results = []
    for model in models:
        model.double().train()
        torch.manual_seed(7)  # same drop-path draws
        inp = x.clone().requires_grad_()
        saved, outs = saved_bytes(model, inp)
        sum((o * torch.arange(o.numel()).view_as(o).cos()).sum()
            for o in outs).backward()
        grads = [inp.grad] + [p.grad for p in model.parameters()]
        results.append((saved, (outs, grads, list(model.buffers()))))
    (saved_auto, auto), (saved_lean, lean), (saved_plain, plain) = results
    assert_close_float64(auto, plain)
    assert_close_float64(lean, plain)
    assert models[0].takes_lean_forms(x) == (auto_picks == 'lean')
    assert saved_auto == (saved_lean if auto_picks == 'lean' else saved_plain)
    if not kwargs.get('with_cp'):  # with_cp keeps the blocks' inputs only
        assert saved_lean < 0.5 * saved_plain


def test_auto_decides_each_call_by_values_kept_per_parameter(monkeypatch):
    """'auto' takes the lean forms in a call exactly when the plain layers
    would keep :data:`AUTO_LEAN_VALUES_PER_PARAMETER` values per parameter
    or more (:func:`values_kept` at the call's size): with the threshold
    between a small and a large input, the blocks run in the plain layers
    for the one and in the lean forms for the other; without gradients
    nothing is decided."""
    model = CMT(CP_ARCH, pretrain_img_size=64).train()
    params = sum(p.numel() for p in model.parameters())
    small, large = torch.rand(1, 3, 64, 64), torch.rand(2, 3, 160, 192)
    per_param = [
        values_kept(model.arch, x.shape[0], *x.shape[2:]) / params
        for x in (small, large)
    ]
    assert per_param[0] < per_param[1]
    monkeypatch.setattr(forms, 'AUTO_LEAN_VALUES_PER_PARAMETER',
                        sum(per_param) / 2)
    seen = []
    model.stages[2].blocks[0].register_forward_pre_hook(
        lambda *args: seen.append(forms.lean_training_now()))
    for x in (small, large, small):
        model(x)
    assert seen == [False, True, False]
    with torch.no_grad():
        before = forms.lean_training_now()
        model(large)
    assert seen[-1] == before  # no decision made
    monkeypatch.setattr(forms, 'AUTO_LEAN_VALUES_PER_PARAMETER',
                        per_param[0])  # the boundary belongs to the lean
    assert model.takes_lean_forms(small)


@pytest.mark.parametrize(
    'arch, size, per_param, lean',
    [
        ('tiny', (2, 256, 256), 10, False),  # the detection demo's batch
        ('tiny', (2, 320, 320), 15, False),  # its earlier batch
        ('small', (8, 224, 224), 21, False),  # the benchmark's cls input
        ('small', (2, 512, 512), 28, False),  # an ADE20K batch per GPU
        ('small', (1, 800, 1216), 56, True),
        ('small', (2, 800, 1216), 107, True),  # a COCO batch per GPU
    ])
def test_auto_picks_as_documented(arch, size, per_param, lean):
    """The values per parameter that forms.AUTO_LEAN_VALUES_PER_PARAMETER's
    comment and the docs quote, and the side of the threshold each falls:
    the plain layers at the demo's and classification sizes, the lean
    forms at detection sizes."""
    model = CMT(arch).train()
    params = sum(p.numel() for p in model.parameters())
    batch, height, width = size
    assert values_kept(model.arch, batch, height, width) / params == \
        pytest.approx(per_param, abs=0.5)
    x = torch.empty(batch, 3, height, width, device='meta')
    assert model.takes_lean_forms(x) == lean


@pytest.mark.parametrize('arch, size', [(CP_ARCH, (2, 128, 128)),
                                        (TINY, (2, 96, 64)),
                                        ('tiny', (1, 192, 224))])
def test_values_kept_is_what_the_plain_layers_keep(arch, size):
    """The estimate 'auto' decides by is within 5% of the values that
    autograd keeps through the plain layers (float32, parameters aside; it
    leaves out per-row and per-channel statistics and counts the resized
    bias's intermediate maps as one; measured: 0.2-2.6% over)."""
    model = CMT(
        arch,
        pretrain_img_size=64 if isinstance(arch, dict) else None,
        lean_training=False).train()
    nbytes, _ = saved_bytes(model, torch.rand(size[0], 3, *size[1:]))
    estimate = values_kept(model.arch, *size)
    assert abs(estimate / (nbytes / 4) - 1) < 0.05, (estimate, nbytes / 4)


@pytest.mark.parametrize('setting', ['yes', 1, None, 'Auto'])
def test_bad_setting_is_a_clear_error(setting):
    with pytest.raises(
            ValueError,
            match=rf"lean_training must be 'auto', True or False, got "
            rf'{setting!r}'):
        CMT(TINY, lean_training=setting)


@pytest.mark.parametrize('setting', [False, True, 'auto'])
def test_setting_from_a_config(setting):
    """``backbone=dict(type='CMT', lean_training=...)`` through mmdet's
    registry."""
    from mmdet.registry import MODELS

    import mmcmt  # noqa: F401 (registers CMT)
    model = MODELS.build(
        dict(
            type='CMT', arch=TINY, pretrain_img_size=64,
            lean_training=setting))
    assert isinstance(model, CMT) and model.lean_training == setting


def test_override_for_every_model():
    """``override_lean_training`` (``plain_layers_in_training``, which the
    benchmark's plain rows take) sets every CMT's setting within, whatever
    its own; and for modules outside a CMT with True and False."""
    lean = CMT(TINY, pretrain_img_size=64, lean_training=True)
    plain = CMT(TINY, pretrain_img_size=64, lean_training=False)
    x = torch.rand(1, 3, 64, 64)
    with forms.plain_layers_in_training():
        assert not lean.takes_lean_forms(x)
        assert not forms.lean_training_now()
        with forms.override_lean_training(True):
            assert plain.takes_lean_forms(x) and forms.lean_training_now()
    with forms.override_lean_training('auto'):
        assert plain.takes_lean_forms(x) == forms.lean_forms_pay(
            values_kept(plain.arch, 1, 64, 64),
            sum(p.numel() for p in plain.parameters()))
    assert lean.takes_lean_forms(x) and not plain.takes_lean_forms(x)
    assert forms.lean_training_now()  # outside any CMT
    with pytest.raises(ValueError, match='lean_training must be'):
        with forms.override_lean_training('on'):
            pass
