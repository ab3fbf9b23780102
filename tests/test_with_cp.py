"""Gradient checkpointing (``with_cp``): the plain model's outputs,
gradients and BatchNorm statistics, several times fewer bytes kept, and
what goes through torch's checkpoint."""
import pytest
import torch
from cmt_helpers import CP_ARCH, TINY, saved_bytes

from mmcmt.models import CMT
from mmcmt.models.utils.forms import plain_layers_in_training


@pytest.mark.parametrize('lean_training', [True, False])
def test_with_cp_same_outputs_and_gradients(lean_training):
    """Through the lean training forms or the plain layers, the same
    outputs and gradients to the bit: the blocks computed again in the
    backward pass run the first forward's operations (in its forms) on the
    same values, and their gradients add up in the same order (measured:
    equal over 10 seeds with the AVX2 and the default kernels)."""
    torch.manual_seed(1)
    kwargs = dict(
        drop_path_rate=0.2, pretrain_img_size=64, lean_training=lean_training)
    plain = CMT(TINY, **kwargs)
    plain.init_weights()
    ckpt = CMT(TINY, with_cp=True, **kwargs)
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
    assert all(torch.equal(a, b) for a, b in zip(o1, o2))
    assert torch.equal(gx1, gx2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


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
def test_with_cp_checkpoints(frozen_stages, freeze_downsample):
    """with_cp really checkpoints: autograd keeps several times fewer bytes
    than the plain layers (as before the IRFFN's lean training form), also
    after frozen stages, and behind a patch aggregation frozen by hand
    (trainable blocks whose input needs no gradient); the outputs and
    gradients are the model's without it, to the bit (see
    :func:`test_with_cp_same_outputs_and_gradients`)."""
    kwargs = dict(
        pretrain_img_size=64, frozen_stages=frozen_stages, lean_training=True)
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
        saved, outs = saved_bytes(model, x)
        loss = sum(
            (o * torch.arange(o.numel()).view_as(o).cos()).sum() for o in outs)
        loss.backward()
        results.append((saved, outs, [p.grad for p in model.parameters()]))
    (_, o1, g1), (saved_cp, o2, g2) = results
    with plain_layers_in_training():  # what the plain layers keep
        saved_plain, _ = saved_bytes(plain, x)
    assert saved_cp * CP_MIN_FACTOR < saved_plain, (saved_plain, saved_cp)
    assert all(torch.equal(a, b) for a, b in zip(o1, o2))
    trainable = 0
    for (name, param), a, b in zip(plain.named_parameters(), g1, g2):
        assert (a is None) == (b is None) == (not param.requires_grad), name
        if a is not None:
            trainable += 1
            assert torch.equal(a, b), name
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
    running statistics a second time (num_batches_tracked 2, not 1). To the
    bit: the same batch statistics, put back as the first forward left
    them."""
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
        assert torch.equal(value, expected[name]), name
