"""The exact fallbacks of :mod:`mmcmt.compat`, each run on every stack (the
newest torch too runs the paths that torch 2.1 takes). What `pip install`
does on each stack: tests/test_install.py."""
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmcmt import compat
from mmcmt.checkpoint import safe_load
from mmcmt.models.utils import attention


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_blockwise_attention_forward_is_sdpa(dtype, monkeypatch):
    """The forward torch < 2.3 trains with equals SDPA, its log-sum-exp
    too, also when the queries are split into several blocks."""
    monkeypatch.setattr(attention, 'BLOCK_ELEMENTS', 2 * 3 * 40 * 7)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 50, 8, generator=g, dtype=dtype)
    k = torch.randn(2, 3, 40, 8, generator=g, dtype=dtype)
    v = torch.randn(2, 3, 40, 8, generator=g, dtype=dtype)
    bias = torch.randn(3, 50, 40, generator=g, dtype=dtype)
    out, lse = attention._blockwise_attention(q, k, v, bias, 0.3)
    logits = q @ k.transpose(-2, -1) * 0.3 + bias
    expected = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, scale=0.3)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert (out - expected).abs().max() < tol
    assert (lse - logits.logsumexp(-1)).abs().max() < tol


#: the training forwards this torch can run (torch < 2.3: blockwise only)
FORWARDS = ['blockwise'] + ['fused'] * compat.HAS_CPU_FLASH_ATTENTION_MASK
#: the safe loaders this torch can run (torch < 2.4: the restricted one)
LOADERS = ['restricted'] + ['add_safe_globals'] * compat.HAS_SAFE_GLOBALS


@pytest.mark.parametrize('forward', FORWARDS)
def test_training_attention_either_forward(forward, monkeypatch):
    """Training attention (forward and every gradient, the bias's included)
    equals autograd through the explicit computation, through the fused
    CPU kernel (where torch has it) and through the blockwise forward."""
    monkeypatch.setattr(attention, 'HAS_CPU_FLASH_ATTENTION_MASK',
                        forward == 'fused')
    g = torch.Generator().manual_seed(1)
    tensors = [
        torch.randn(
            *shape, generator=g, dtype=torch.float64, requires_grad=True)
        for shape in ((2, 2, 30, 8), (2, 2, 12, 8), (2, 2, 12, 8), (2, 30, 12))
    ]
    out = attention.biased_attention(*tensors, 0.25)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, tensors, grad)
    q, k, v, bias = tensors
    weights = (q @ k.transpose(-2, -1) * 0.25 + bias).softmax(-1)
    expected_out = weights @ v
    expected = torch.autograd.grad(expected_out, tensors, grad)
    assert (out - expected_out).abs().max() < 1e-10
    for a, b in zip(got, expected):
        assert (a - b).abs().max() < 1e-10


def _mmengine_checkpoint(path, extra=None):
    """What mmengine's runner saves: weights, a message hub with its
    HistoryBuffers, numpy values in meta."""
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('test_compat')
    for value in (1.0, 0.5, 0.25):
        hub.update_scalar('train/loss', value)
    checkpoint = dict(
        state_dict={'w': torch.arange(3.)},
        message_hub=hub.state_dict(),
        meta=dict(
            seed=np.int64(3),
            scale=np.float64(0.5),
            stats=np.arange(4, dtype=np.float32)))
    checkpoint.update(extra or {})
    torch.save(checkpoint, path)


class _Payload:

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


@pytest.mark.parametrize('loader', LOADERS)
def test_both_safe_loaders(loader, tmp_path, monkeypatch):
    """torch >= 2.4 reads mmengine checkpoints through weights_only and
    add_safe_globals, torch 2.1 through mmcmt's restricted unpickler: both
    read them whole and refuse a payload, naming what they refused."""
    monkeypatch.setattr(safe_load, 'HAS_SAFE_GLOBALS',
                        loader == 'add_safe_globals')
    good, bad = tmp_path / 'good.pth', tmp_path / 'bad.pth'
    _mmengine_checkpoint(good)
    marker = tmp_path / 'ran'
    _mmengine_checkpoint(bad, dict(payload=_Payload(marker)))
    loaded = safe_load.load_file(str(good))
    assert torch.equal(loaded['state_dict']['w'], torch.arange(3.))
    assert loaded['meta']['seed'] == 3 and loaded['meta']['scale'] == 0.5
    assert np.array_equal(loaded['meta']['stats'], np.arange(4))
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert buffer.mean() == pytest.approx(1.75 / 3)
    with pytest.raises(safe_load.UntrustedCheckpointError) as info:
        safe_load.load_file(str(bad))
    assert 'system' in str(info.value) and not marker.exists()


def test_load_state_dict_pre_hook_either_form():
    """The public hook registration and torch 2.1's private one call the
    hook the same way."""
    calls = []

    def hook(module, state_dict, prefix, *args):
        calls.append((type(module).__name__, prefix, sorted(state_dict)))

    for private in (False, True):
        layer = torch.nn.Linear(2, 2)
        if private:
            layer._register_load_state_dict_pre_hook(hook, with_module=True)
        else:
            compat.register_load_state_dict_pre_hook(layer, hook)
        torch.nn.Sequential(layer).load_state_dict({
            '0.weight':
            torch.zeros(2, 2),
            '0.bias':
            torch.zeros(2)
        })
    assert calls[0] == calls[1] == ('Linear', '0.', ['0.bias', '0.weight'])


def test_capabilities_are_what_torch_has():
    assert compat.HAS_SAFE_GLOBALS == hasattr(torch.serialization,
                                              'add_safe_globals')
    assert compat.is_compiling() is False
    assert compat.autocast_enabled('cpu') is False
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert compat.autocast_enabled('cpu') is True
    # torch 2.1's exporter has no dynamo argument; the newest defaults to it
    assert compat.ONNX_EXPORT_KWARGS in ({}, {'dynamo': False})
    print(
        f'torch {torch.__version__}: add_safe_globals '
        f'{compat.HAS_SAFE_GLOBALS}, masked CPU flash attention '
        f'{compat.HAS_CPU_FLASH_ATTENTION_MASK}, onnx '
        f'{compat.ONNX_EXPORT_KWARGS}',
        file=sys.stderr)
