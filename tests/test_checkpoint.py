"""Loading released (official-layout) and mmcmt checkpoints."""
import subprocess
import sys

import pytest
import torch
from helpers import (ARCH_OF_VARIANT, official_shapes,
                     random_official_state_dict)

from mmcmt.models import CMT, CMTClassifier
from mmcmt.models.utils import convert_official_cmt, read_checkpoint

SHAPES = official_shapes()
ROOT = __file__.rsplit('/tests/', 1)[0]


@pytest.fixture(scope='module')
def official_tiny():
    return random_official_state_dict(SHAPES['cmt_ti']['state_dict'], seed=5)


def _assert_loaded(model, official):
    converted = convert_official_cmt(official)
    own = model.state_dict()
    for key, value in converted.items():
        if key.startswith('backbone.'):
            assert torch.equal(own[key[len('backbone.'):]], value), key


@pytest.mark.parametrize('layout', ['top-level', 'model', 'state_dict'])
def test_init_cfg_loads_released_file(tmp_path, official_tiny, layout):
    path = tmp_path / 'cmt_tiny.pth'
    payload = official_tiny if layout == 'top-level' else {
        layout: official_tiny, 'epoch': 300}
    torch.save(payload, path)
    model = CMT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    _assert_loaded(model, official_tiny)


def test_ddp_prefix_and_detector_checkpoint(tmp_path, official_tiny):
    path = tmp_path / 'ddp.pth'
    torch.save({'model': {f'module.{k}': v
                          for k, v in official_tiny.items()}}, path)
    model = CMT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    _assert_loaded(model, official_tiny)

    # A detector checkpoint: mmcmt keys under backbone., plus a neck.
    detector = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    detector['neck.conv.weight'] = torch.zeros(1)
    path = tmp_path / 'detector.pth'
    torch.save({'state_dict': detector, 'meta': {'epoch': 12}}, path)
    for cfg in (dict(checkpoint=str(path)),
                dict(checkpoint=str(path), prefix='backbone.')):
        other = CMT('tiny', init_cfg=dict(type='Pretrained', **cfg))
        other.init_weights()
        _assert_loaded(other, official_tiny)


def test_classifier_loads_released_file_with_head(tmp_path, official_tiny):
    path = tmp_path / 'cmt_tiny.pth'
    torch.save({'model': official_tiny}, path)
    model = CMTClassifier(
        'tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    assert torch.equal(model.head.fc.weight, official_tiny['head.weight'])
    assert torch.equal(model.head.conv.weight, official_tiny['_fc.weight'])
    assert torch.equal(model.head.norm.running_var,
                       official_tiny['_bn.running_var'])


def test_missing_file_error():
    model = CMT('small', init_cfg=dict(
        type='Pretrained', checkpoint='checkpoints/cmt_small.pth'))
    with pytest.raises(FileNotFoundError) as err:
        model.init_weights()
    message = str(err.value)
    assert "'checkpoints/cmt_small.pth'" in message
    assert 'Download the released' in message and 'github.com' in message
    assert 'put the file at that path' in message


def test_missing_keys_are_an_error(tmp_path, official_tiny):
    partial = {k: v for k, v in official_tiny.items()
               if not k.startswith('blocks_c.3.')}
    partial['unrelated.weight'] = torch.zeros(2)
    path = tmp_path / 'partial.pth'
    torch.save(partial, path)
    model = CMT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(RuntimeError) as err:
        model.init_weights()
    message = str(err.value)
    assert 'missing keys' in message and 'stages.2.blocks.3.attn.kv.weight' \
        in message
    assert 'unexpected keys (1): unrelated.weight' in message


def test_unexpected_keys_are_reported_not_fatal(tmp_path, official_tiny,
                                                capsys):
    extra = dict(official_tiny, **{'extra.weight': torch.zeros(2)})
    path = tmp_path / 'extra.pth'
    torch.save(extra, path)
    model = CMT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()  # logs a warning naming extra.weight
    _assert_loaded(model, official_tiny)


def test_wrong_arch_is_a_clear_error(tmp_path, official_tiny):
    path = tmp_path / 'cmt_tiny.pth'
    torch.save(official_tiny, path)
    model = CMT('small', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(RuntimeError, match='size mismatch'):
        model.init_weights()


def test_not_a_state_dict(tmp_path):
    path = tmp_path / 'bad.pth'
    torch.save({'model': [1, 2, 3]}, path)
    with pytest.raises(ValueError, match='holds no state dict'):
        read_checkpoint(str(path))


def test_reads_with_weights_only(tmp_path, official_tiny):
    """A pickle that is not plain tensors is refused, not executed."""
    class Evil:
        def __reduce__(self):
            return (print, ('executed',))

    path = tmp_path / 'evil.pth'
    torch.save({'model': official_tiny, 'evil': Evil()}, path)
    with pytest.raises(Exception, match='[Ww]eights only'):
        read_checkpoint(str(path))


def test_convert_tool_round_trip(tmp_path, official_tiny):
    src, dst = tmp_path / 'cmt_tiny.pth', tmp_path / 'cmt_tiny_mmcmt.pth'
    torch.save({'model': official_tiny}, src)
    tool = [sys.executable, f'{ROOT}/tools/convert_official_cmt.py']
    subprocess.run(tool + [str(src), str(dst)], check=True, cwd=ROOT)
    converted = torch.load(dst, weights_only=True)['state_dict']
    assert not any(k.startswith(('head.', 'backbone.')) for k in converted)
    model = CMT('tiny')
    model.load_state_dict(converted, strict=True)
    _assert_loaded(model, official_tiny)
    # never overwrites
    before = dst.read_bytes()
    result = subprocess.run(tool + [str(src), str(dst)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0 and 'exists' in result.stderr
    assert dst.read_bytes() == before


@pytest.mark.parametrize('variant', list(ARCH_OF_VARIANT))
def test_every_released_layout_converts(variant):
    shapes = SHAPES[variant]['state_dict']
    sd = {k: torch.zeros(s) for k, s in shapes.items()}
    model = CMTClassifier(ARCH_OF_VARIANT[variant])
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_classify_tool_prints_top5(tmp_path, official_tiny):
    """tools/classify.py: the released classifier's top-5 for an image, the
    same as running CMTClassifier on the preprocessed image."""
    import cv2
    import numpy as np
    path = tmp_path / 'cmt_tiny.pth'
    torch.save({'model': official_tiny}, path)
    image = (np.random.default_rng(0).random((200, 300, 3)) * 255).astype(
        np.uint8)
    cv2.imwrite(str(tmp_path / 'image.png'), image)
    out = subprocess.run(
        [sys.executable, 'tools/classify.py', str(tmp_path / 'image.png'),
         '--arch', 'tiny', '--checkpoint', str(path)],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    rows = [line.split() for line in out.strip().splitlines()[-5:]]
    assert len(rows) == 5 and all(r[0].endswith('%') for r in rows)

    sys.path.insert(0, f'{ROOT}/tools')
    try:
        from classify import preprocess
    finally:
        sys.path.pop(0)
    model = CMTClassifier('tiny').eval()
    model.load_state_dict(official_tiny)
    with torch.no_grad():
        probs = model(preprocess(str(tmp_path / 'image.png'), 160)).softmax(-1)
    top = probs[0].topk(5)
    assert [int(r[1]) for r in rows] == top.indices.tolist()
    assert float(rows[0][0][:-1]) == pytest.approx(
        100 * top.values[0].item(), abs=0.01)
