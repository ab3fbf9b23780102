"""Loading released (official-layout) and mmcmt checkpoints."""
import logging
import re
import sys

import pytest
import torch
from helpers import (ARCH_OF_VARIANT, official_shapes,
                     random_official_state_dict, run_tool)

from mmcmt.checkpoint import (ArchMismatchError, convert_official_cmt,
                              read_checkpoint, to_official_cmt)
from mmcmt.checkpoint.safe_load import load_file
from mmcmt.models import CMT, CMTClassifier

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


# Released key -> CMTClassifier key, written out by hand from
# shared/reference/cmt_architecture.md (not derived from the loader's own
# mapping): every kind of tensor, spread over stages and blocks of CMT-Ti
# (depths 2, 2, 10, 2). 1x1 convolutions that mmcmt runs as Linear layers
# (IRFFN conv1.0 and conv2.0) are compared flattened.
KEY_TABLE = [
    # stem: conv -> GELU -> BN, three times
    ('stem_conv1.weight', 'backbone.stem.0.conv.weight'),
    ('stem_conv1.bias', 'backbone.stem.0.conv.bias'),
    ('stem_norm1.weight', 'backbone.stem.0.norm.weight'),
    ('stem_norm1.bias', 'backbone.stem.0.norm.bias'),
    ('stem_norm1.running_mean', 'backbone.stem.0.norm.running_mean'),
    ('stem_norm1.running_var', 'backbone.stem.0.norm.running_var'),
    ('stem_conv2.weight', 'backbone.stem.1.conv.weight'),
    ('stem_conv2.bias', 'backbone.stem.1.conv.bias'),
    ('stem_norm2.weight', 'backbone.stem.1.norm.weight'),
    ('stem_norm2.bias', 'backbone.stem.1.norm.bias'),
    ('stem_norm2.running_mean', 'backbone.stem.1.norm.running_mean'),
    ('stem_norm2.running_var', 'backbone.stem.1.norm.running_var'),
    ('stem_conv3.weight', 'backbone.stem.2.conv.weight'),
    ('stem_conv3.bias', 'backbone.stem.2.conv.bias'),
    ('stem_norm3.weight', 'backbone.stem.2.norm.weight'),
    ('stem_norm3.bias', 'backbone.stem.2.norm.bias'),
    ('stem_norm3.running_mean', 'backbone.stem.2.norm.running_mean'),
    ('stem_norm3.running_var', 'backbone.stem.2.norm.running_var'),
    # patch aggregation: 2x2 conv, LayerNorm
    ('patch_embed_a.proj.weight', 'backbone.stages.0.downsample.proj.weight'),
    ('patch_embed_b.proj.bias', 'backbone.stages.1.downsample.proj.bias'),
    ('patch_embed_c.norm.weight', 'backbone.stages.2.downsample.norm.weight'),
    ('patch_embed_d.norm.bias', 'backbone.stages.3.downsample.norm.bias'),
    # relative position biases, one per stage
    ('relative_pos_a', 'backbone.stages.0.relative_position_bias'),
    ('relative_pos_b', 'backbone.stages.1.relative_position_bias'),
    ('relative_pos_c', 'backbone.stages.2.relative_position_bias'),
    ('relative_pos_d', 'backbone.stages.3.relative_position_bias'),
    # LPU (the block's own depthwise conv 'proj')
    ('blocks_a.0.proj.weight', 'backbone.stages.0.blocks.0.lpu.weight'),
    ('blocks_c.7.proj.bias', 'backbone.stages.2.blocks.7.lpu.bias'),
    # the two LayerNorms
    ('blocks_a.1.norm1.weight', 'backbone.stages.0.blocks.1.norm1.weight'),
    ('blocks_d.0.norm1.bias', 'backbone.stages.3.blocks.0.norm1.bias'),
    ('blocks_b.0.norm2.weight', 'backbone.stages.1.blocks.0.norm2.weight'),
    ('blocks_c.9.norm2.bias', 'backbone.stages.2.blocks.9.norm2.bias'),
    # attention: q, output projection, key/value reduction (dwconv, BN)
    ('blocks_b.1.attn.q.weight', 'backbone.stages.1.blocks.1.attn.q.weight'),
    ('blocks_c.4.attn.q.bias', 'backbone.stages.2.blocks.4.attn.q.bias'),
    ('blocks_d.1.attn.proj.weight',
     'backbone.stages.3.blocks.1.attn.proj.weight'),
    ('blocks_a.0.attn.proj.bias', 'backbone.stages.0.blocks.0.attn.proj.bias'),
    ('blocks_a.1.attn.sr.0.weight',
     'backbone.stages.0.blocks.1.attn.sr.conv.weight'),
    ('blocks_c.2.attn.sr.0.bias',
     'backbone.stages.2.blocks.2.attn.sr.conv.bias'),
    ('blocks_b.0.attn.sr.1.weight',
     'backbone.stages.1.blocks.0.attn.sr.norm.weight'),
    ('blocks_b.1.attn.sr.1.bias',
     'backbone.stages.1.blocks.1.attn.sr.norm.bias'),
    ('blocks_c.5.attn.sr.1.running_mean',
     'backbone.stages.2.blocks.5.attn.sr.norm.running_mean'),
    ('blocks_a.0.attn.sr.1.running_var',
     'backbone.stages.0.blocks.0.attn.sr.norm.running_var'),
    # IRFFN: conv1 = (1x1 conv, GELU, BN), proj = dwconv, proj_bn,
    # conv2 = (1x1 conv, BN)
    ('blocks_a.0.mlp.conv1.0.weight',
     'backbone.stages.0.blocks.0.ffn.fc1.weight'),
    ('blocks_d.1.mlp.conv1.0.bias', 'backbone.stages.3.blocks.1.ffn.fc1.bias'),
    ('blocks_b.1.mlp.conv1.2.weight',
     'backbone.stages.1.blocks.1.ffn.norm1.weight'),
    ('blocks_c.1.mlp.conv1.2.bias',
     'backbone.stages.2.blocks.1.ffn.norm1.bias'),
    ('blocks_c.6.mlp.conv1.2.running_mean',
     'backbone.stages.2.blocks.6.ffn.norm1.running_mean'),
    ('blocks_a.1.mlp.conv1.2.running_var',
     'backbone.stages.0.blocks.1.ffn.norm1.running_var'),
    ('blocks_c.0.mlp.proj.weight',
     'backbone.stages.2.blocks.0.ffn.dwconv.weight'),
    ('blocks_d.0.mlp.proj.bias', 'backbone.stages.3.blocks.0.ffn.dwconv.bias'),
    ('blocks_a.1.mlp.proj_bn.weight',
     'backbone.stages.0.blocks.1.ffn.norm2.weight'),
    ('blocks_b.0.mlp.proj_bn.bias',
     'backbone.stages.1.blocks.0.ffn.norm2.bias'),
    ('blocks_c.3.mlp.proj_bn.running_mean',
     'backbone.stages.2.blocks.3.ffn.norm2.running_mean'),
    ('blocks_d.1.mlp.proj_bn.running_var',
     'backbone.stages.3.blocks.1.ffn.norm2.running_var'),
    ('blocks_b.0.mlp.conv2.0.weight',
     'backbone.stages.1.blocks.0.ffn.fc2.weight'),
    ('blocks_c.8.mlp.conv2.0.bias', 'backbone.stages.2.blocks.8.ffn.fc2.bias'),
    ('blocks_d.0.mlp.conv2.1.weight',
     'backbone.stages.3.blocks.0.ffn.norm3.weight'),
    ('blocks_a.0.mlp.conv2.1.bias',
     'backbone.stages.0.blocks.0.ffn.norm3.bias'),
    ('blocks_b.1.mlp.conv2.1.running_mean',
     'backbone.stages.1.blocks.1.ffn.norm3.running_mean'),
    ('blocks_c.9.mlp.conv2.1.running_var',
     'backbone.stages.2.blocks.9.ffn.norm3.running_var'),
    # classification head: _fc (1x1 conv), _bn, head (Linear)
    ('_fc.weight', 'head.conv.weight'),
    ('_fc.bias', 'head.conv.bias'),
    ('_bn.weight', 'head.norm.weight'),
    ('_bn.bias', 'head.norm.bias'),
    ('_bn.running_mean', 'head.norm.running_mean'),
    ('_bn.running_var', 'head.norm.running_var'),
    ('head.weight', 'head.fc.weight'),
    ('head.bias', 'head.fc.bias'),
]
# k and v, concatenated in mmcmt's kv layer (k first): (stage, block)
KV_BLOCKS = [('a', 0), ('a', 1), ('b', 1), ('c', 0), ('c', 9), ('d', 1)]


def _kind(key):
    """A model key with its stage and block indices generalised."""
    return re.sub(r'(stages|blocks)\.\d+', r'\1.N', key)


def test_key_mapping_against_hand_written_table():
    """Each released tensor lands in the module the architecture says it
    belongs to (so swapping, say, k and v, norm1 and norm2 or two stem
    layers fails here), checked by value against a hand-written table."""
    shapes = SHAPES['cmt_ti']['state_dict']
    official = random_official_state_dict(shapes, seed=11)
    model = CMTClassifier('tiny')
    model.load_state_dict(official, strict=True)
    own = model.state_dict()

    for src, dst in KEY_TABLE:
        assert src in shapes, src  # a real key of the released files
        expected = official[src]
        if dst.endswith(('ffn.fc1.weight', 'ffn.fc2.weight')):
            assert expected.shape[2:] == (1, 1), src
            expected = expected.flatten(1)  # 1x1 conv -> Linear
        assert own[dst].shape == expected.shape, (src, dst)
        assert torch.equal(own[dst], expected), (src, dst)
    # the random tensors differ from each other (else a swap could pass)
    values = [official[src] for src, _ in KEY_TABLE]
    for i, a in enumerate(values):
        for b in values[i + 1:]:
            assert a.shape != b.shape or not torch.equal(a, b)

    for stage, block in KV_BLOCKS:
        i = 'abcd'.index(stage)
        attn = model.backbone.stages[i].blocks[block].attn
        C = attn.q.in_features
        name = f'blocks_{stage}.{block}.attn'
        assert attn.kv.weight.shape == (2 * C, C)
        assert torch.equal(attn.kv.weight[:C], official[f'{name}.k.weight'])
        assert torch.equal(attn.kv.weight[C:], official[f'{name}.v.weight'])
        assert torch.equal(attn.kv.bias[:C], official[f'{name}.k.bias'])
        assert torch.equal(attn.kv.bias[C:], official[f'{name}.v.bias'])

    # the table covers every kind of tensor of the model (BN step counters
    # aside; kv is checked above)
    kinds = {
        _kind(k)
        for k in own
        if not k.endswith('num_batches_tracked') and '.attn.kv.' not in k
    }
    assert kinds == {_kind(dst) for _, dst in KEY_TABLE}


@pytest.mark.parametrize('layout', ['top-level', 'model', 'state_dict'])
def test_init_cfg_loads_released_file(tmp_path, official_tiny, layout):
    path = tmp_path / 'cmt_tiny.pth'
    payload = official_tiny if layout == 'top-level' else {
        layout: official_tiny,
        'epoch': 300
    }
    torch.save(payload, path)
    model = CMT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    _assert_loaded(model, official_tiny)


def test_ddp_prefix_and_detector_checkpoint(tmp_path, official_tiny):
    path = tmp_path / 'ddp.pth'
    torch.save({'model': {
        f'module.{k}': v
        for k, v in official_tiny.items()
    }}, path)
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


def test_missing_file_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a checkout may hold checkpoints/ itself
    model = CMT(
        'small',
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/cmt_small.pth'))
    with pytest.raises(FileNotFoundError) as err:
        model.init_weights()
    message = str(err.value)
    assert "'checkpoints/cmt_small.pth'" in message
    assert 'https://github.com/ggjy/CMT.pytorch/releases/download/' \
        'release-v1/cmt_tiny.pth' in message
    assert 'name the URL as the checkpoint' in message


def test_missing_keys_are_an_error(tmp_path, official_tiny):
    partial = {
        k: v
        for k, v in official_tiny.items() if not k.startswith('blocks_c.3.')
    }
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


class _Records(logging.Handler):
    """Collects the records of a logger (mmengine's MMLogger does not
    propagate to the root logger, so pytest's caplog does not see them)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_unexpected_keys_are_reported_not_fatal(tmp_path, official_tiny):
    from mmengine.logging import MMLogger
    extra = dict(official_tiny, **{'extra.weight': torch.zeros(2)})
    path = tmp_path / 'extra.pth'
    torch.save(extra, path)
    model = CMT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    logger = MMLogger.get_current_instance()  # where print_log(.., 'current')
    handler = _Records()  # writes
    logger.addHandler(handler)
    try:
        model.init_weights()
    finally:
        logger.removeHandler(handler)
    warnings = [
        r.getMessage() for r in handler.records if r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1, [r.getMessage() for r in handler.records]
    assert f'CMT from {path}: unexpected keys (1): extra.weight (ignored)' \
        == warnings[0]
    assert 'missing' not in warnings[0]
    _assert_loaded(model, official_tiny)


@pytest.mark.parametrize('held, model_arch, name, other', [
    ('cmt_s', 'xs', "CMT-S (arch='small')", "CMT-XS (arch='xs')"),
    ('cmt_ti', 'small', "CMT-Ti (arch='tiny')", "CMT-S (arch='small')"),
])
def test_wrong_arch_is_one_line_before_anything_loads(tmp_path, held,
                                                      model_arch, name, other):
    """A released file of another arch (as cmt_xs.pth once was a copy of
    cmt_small.pth) names both archs and what to change in one line, before
    any bias is resized or any tensor loaded."""
    from mmengine.logging import MMLogger
    path = tmp_path / f'{held}.pth'
    torch.save(random_official_state_dict(SHAPES[held]['state_dict'], 3), path)
    model = CMT(
        model_arch, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    logger = MMLogger.get_current_instance()
    handler = _Records()
    logger.addHandler(handler)
    try:
        with pytest.raises(ArchMismatchError) as err:
            model.init_weights()
    finally:
        logger.removeHandler(handler)
    message = str(err.value)
    assert '\n' not in message and len(message) < 400, message
    assert f'{path}: the checkpoint holds {name} but the model is {other}' \
        in message
    wanted = re.search(r"arch='(\w+)'", name)[1]
    assert f"set the backbone's arch='{wanted}'" in message
    assert not any('resized' in r.getMessage() for r in handler.records)
    # non-strict loading (as load_from does) leaves every tensor as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ArchMismatchError):
        model.load_state_dict(torch.load(path), strict=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_detector_checkpoint_of_another_arch(tmp_path):
    """``load_from`` (mmengine's load_checkpoint, non-strict) of a CMT-S
    detector into a CMT-Ti detector: the same line, naming the neck's
    channels, instead of a warning and a half-loaded model."""
    from mmengine.runner import load_checkpoint
    small = CMT('small')
    detector = {f'backbone.{k}': v for k, v in small.state_dict().items()}
    path = tmp_path / 'retinanet_cmt_s.pth'
    torch.save({'state_dict': detector, 'meta': {}}, path)
    target = torch.nn.Module()
    target.backbone = CMT('tiny')
    with pytest.raises(ArchMismatchError) as err:
        load_checkpoint(target, str(path))
    assert str(err.value) == (
        "the checkpoint holds CMT-S (arch='small') but the model is CMT-Ti "
        "(arch='tiny'): set the backbone's arch='small' (and a neck's "
        "in_channels=[64, 128, 256, 512]) to load it, or load a checkpoint "
        "of the model's arch; nothing was loaded")


def test_custom_arch_is_described_by_its_numbers():
    custom = dict(
        embed_dims=[32, 64, 128, 256],
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 4, 8],
        mlp_ratios=2,
        sr_ratios=[8, 4, 2, 1],
        stem_channels=16)
    with pytest.raises(ArchMismatchError) as err:
        CMT('base').load_state_dict(CMT(custom).state_dict())
    assert ('holds a custom CMT (stem_channels=16, embed_dims=[32, 64, 128, '
            '256], depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], '
            "hidden_dims=[64, 128, 256, 512]) but the model is CMT-B "
            "(arch='base')") in str(err.value)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / 'bad.pth'
    torch.save({'model': [1, 2, 3]}, path)
    with pytest.raises(ValueError, match='holds no state dict'):
        read_checkpoint(str(path))


def test_reads_with_weights_only(tmp_path, official_tiny, capsys):
    """A pickle that is not plain tensors is refused, not executed."""

    class Evil:

        def __reduce__(self):
            return (print, ('executed', ))

    path = tmp_path / 'evil.pth'
    torch.save({'model': official_tiny, 'evil': Evil()}, path)
    with pytest.raises(
            Exception,
            match='refusing to load checkpoint .*: it '
            'holds print.* not trusted, so it was not loaded'):
        read_checkpoint(str(path))
    assert 'executed' not in capsys.readouterr().out


def test_convert_tool_round_trip(tmp_path, official_tiny):
    src, dst = tmp_path / 'cmt_tiny.pth', tmp_path / 'cmt_tiny_mmcmt.pth'
    torch.save({'model': official_tiny}, src)
    tool = 'tools/convert_official_cmt.py'
    run_tool(tool, str(src), str(dst))
    converted = load_file(str(dst))['state_dict']
    assert not any(k.startswith(('head.', 'backbone.')) for k in converted)
    model = CMT('tiny')
    model.load_state_dict(converted, strict=True)
    _assert_loaded(model, official_tiny)
    # never overwrites
    before = dst.read_bytes()
    result = run_tool(tool, str(src), str(dst), check=False)
    assert result.returncode != 0 and 'exists' in result.stderr
    assert dst.read_bytes() == before


@pytest.mark.parametrize('variant', list(ARCH_OF_VARIANT))
def test_every_released_layout_converts(variant):
    shapes = SHAPES[variant]['state_dict']
    sd = {k: torch.zeros(s) for k, s in shapes.items()}
    model = CMTClassifier(ARCH_OF_VARIANT[variant])
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize('variant', list(ARCH_OF_VARIANT))
def test_to_official_writes_the_released_layout(variant):
    """A classifier's state dict in the released layout: exactly the keys
    and shapes of the released file, and back to the same tensors."""
    model = CMTClassifier(ARCH_OF_VARIANT[variant])
    for i, tensor in enumerate(model.state_dict().values()):
        torch.manual_seed(i)
        if tensor.is_floating_point():
            tensor.copy_(torch.randn_like(tensor))
    state_dict = model.state_dict()
    official = to_official_cmt(state_dict)
    assert {
        k: list(v.shape)
        for k, v in official.items()
    } == SHAPES[variant]['state_dict']
    back = convert_official_cmt(official)
    assert sorted(back) == sorted(state_dict)
    assert all(torch.equal(back[k], state_dict[k]) for k in state_dict)


def test_to_official_names_foreign_keys():
    with pytest.raises(KeyError, match='neck.lateral.weight'):
        to_official_cmt({'neck.lateral.weight': torch.zeros(1)})


def test_classify_tool_prints_top5(tmp_path, official_tiny):
    """tools/classify.py: the released classifier's top-5 for an image, the
    same as running CMTClassifier on the preprocessed image."""
    import cv2
    import numpy as np
    path = tmp_path / 'cmt_tiny.pth'
    torch.save({'model': official_tiny}, path)
    image = (np.random.default_rng(0).random(
        (200, 300, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'image.png'), image)
    out = run_tool('tools/classify.py', str(tmp_path / 'image.png'), '--arch',
                   'tiny', '--checkpoint', str(path)).stdout
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
