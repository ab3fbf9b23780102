"""Behaviour of the CMT backbone: shapes, arguments, errors, frozen stages,
norm_eval, drop path and initialisation (gradient checkpointing:
test_with_cp.py; the lean training forms: test_lean_training*.py; the
relative position bias: test_position_bias.py)."""
import math

import pytest
import torch
import torch.nn.functional as F
from cmt_helpers import TINY
from torch.nn.modules.batchnorm import _BatchNorm

from mmcmt.models import CMT


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
    gives, cropped to ceil(H/s) x ceil(W/s): to the bit, the model pads to
    the same values and runs the same operations on them (measured: equal
    over 10 seeds with the AVX2 and the default kernels)."""
    model = CMT(TINY, pretrain_img_size=64).eval()
    x = torch.randn(1, 3, 50, 77)
    padded = F.pad(x, (0, 96 - 77, 0, 64 - 50))
    with torch.no_grad():
        outs, ref = model(x), model(padded)
    for i, (out, full) in enumerate(zip(outs, ref)):
        s = 4 * 2**i
        h, w = -(-50 // s), -(-77 // s)
        assert out.shape[-2:] == (h, w)
        assert torch.equal(out, full[..., :h, :w])


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
    # Sample statistics of the draws, bounded at five standard errors or
    # more: 1024 values of a truncated normal of std .02 (std within 15% =
    # 6.8 standard errors of 2.2%; mean within 0.003 = 4.8 of 0.000625), 576
    # of a normal of std sqrt(2/9) (within 20% = 6.8 of 2.9%).
    w = model.stages[3].blocks[0].attn.q.weight  # trunc normal, std .02
    assert w.numel() == 1024
    assert 0.017 < w.std() < 0.023 and abs(w.mean()) < 0.003
    conv = model.stages[3].blocks[0].ffn.dwconv  # normal, fan-out scaled
    assert conv.weight.numel() == 576
    assert 0.8 < conv.weight.std() / math.sqrt(2 / 9) < 1.2
    assert torch.all(model.stages[0].downsample.norm.weight == 1)
