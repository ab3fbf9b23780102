"""Deploying whole detectors to ONNX Runtime (mmcmt.deploy and the
tools' --onnx): the same detections and COCO AP as PyTorch through mmdet's
own post-processing, at any input size, for RetinaNet, Mask R-CNN and
Cascade Mask R-CNN."""
import argparse
import importlib.util
import os
import os.path as osp
import pickle
import re
import sys
import types

import mmcv
import numpy as np
import pytest
import torch
from helpers import coco_options, run_tool
from mmengine.config import DictAction
from mmengine.structures import InstanceData

from mmcmt.datasets import make_synthetic_coco
from mmcmt.deploy import (attach_onnx, compare_parts, end_profiling,
                          export_detector, load_onnx_detector,
                          match_detections, onnx_modules, op_time_shares,
                          read_manifest, runtime)
from mmcmt.engine import UsageError, load_config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SYNTHETIC = osp.join(ROOT, 'configs', 'retinanet_cmt_ti_fpn_synthetic.py')
SIZE = 128  # images, training and tracing size
SMALL_ARCH = dict(
    embed_dims=[16, 32, 48, 64],
    depths=[1, 2, 1, 1],
    num_heads=[1, 2, 3, 4],
    mlp_ratios=[2, 3.5, 4, 2.25],
    sr_ratios=[4, 2, 2, 1],
    stem_channels=8)


def synthetic_options(root):
    """--cfg-options for the synthetic RetinaNet on ``root``: 128x128
    images; training (on the 4 validation images, to get a detector worth
    comparing in seconds) for 20 epochs of 2 iterations, no flips."""
    return coco_options(root) + [
        'train_dataloader.dataset.ann_file=annotations/'
        'instances_val2017.json',
        'train_dataloader.dataset.data_prefix.img=val2017/',
        f'train_dataloader.dataset.pipeline.2.scale=({SIZE},{SIZE})',
        'train_dataloader.dataset.pipeline.3.prob=0.0',
        f'val_dataloader.dataset.pipeline.1.scale=({SIZE},{SIZE})',
        f'test_dataloader.dataset.pipeline.1.scale=({SIZE},{SIZE})',
        'train_cfg.max_epochs=20', 'train_cfg.val_interval=20',
        'param_scheduler.0.end=10', 'param_scheduler.1.T_max=20',
        'param_scheduler.1.end=20', 'default_hooks.checkpoint.interval=20'
    ]


def config_with(path, options):
    parser = argparse.ArgumentParser()
    parser.add_argument('--o', nargs='+', action=DictAction)
    return load_config(path, parser.parse_args(['--o'] + options).o)


@pytest.fixture(scope='module')
def retinanet(tmp_path_factory):
    """RetinaNet CMT-Ti trained briefly on generated shapes, and its export
    by tools/export_detector_onnx.py (traced at 128x128)."""
    tmp = tmp_path_factory.mktemp('deploy')
    root = str(tmp / 'coco') + '/'
    make_synthetic_coco(root, num_train=0, num_val=4, img_size=(SIZE, SIZE))
    options = synthetic_options(root)
    run_tool('tools/train.py', SYNTHETIC, '--work-dir', str(tmp / 'train'),
             '--cfg-options', *options)
    checkpoint = str(tmp / 'train' / 'epoch_20.pth')
    onnx_dir = str(tmp / 'onnx')
    image = osp.join(root, 'val2017', '000000000001.jpg')
    deployed = run_tool('tools/export_detector_onnx.py',
                        SYNTHETIC, checkpoint, onnx_dir, '--shape', str(SIZE),
                        str(SIZE), '--check-image', image, '--cfg-options',
                        *options).stdout
    return dict(
        tmp=tmp,
        root=root,
        options=options,
        checkpoint=checkpoint,
        onnx_dir=onnx_dir,
        image=image,
        deployed=deployed,
        cfg=config_with(SYNTHETIC, options))


def coco_ap(out):
    """bbox AP, AP50, AP75 of mmdet's test log line."""
    found = re.search(
        r'coco/bbox_mAP: ([\d.]+) +coco/bbox_mAP_50: ([\d.]+) '
        r'+coco/bbox_mAP_75: ([\d.]+)', out)
    assert found, out[-2000:]
    return [float(v) for v in found.groups()]


def kept(result, score_thr=0.05):
    """The detections of a dumped result scoring ``score_thr`` or more."""
    pred = result['pred_instances']
    keep = pred['scores'] >= score_thr
    return InstanceData(
        bboxes=pred['bboxes'][keep],
        scores=pred['scores'][keep],
        labels=pred['labels'][keep])


def test_deploy_tool_checks_itself(retinanet):
    out = retinanet['deployed']
    assert 'wrote' in out and \
        'features.onnx, features.size_inputs.onnx, bbox_head.onnx' in out
    for line in out.splitlines():
        if line.startswith('  input '):  # each part, both input sizes
            errors = re.findall(r'(\w+) ([\d.e+-]+) \(([\d.e+-]+)\)', line)
            assert [e[0] for e in errors] == ['features', 'bbox_head']
            assert all(float(rel) < 1e-4 for _, _, rel in errors), line
    found = re.search(r'000000000001.jpg: (\d+) vs (\d+), (\d+) matched', out)
    assert found, out
    count_torch, count_onnx, matched = map(int, found.groups())
    assert count_torch > 0 and count_torch == count_onnx == matched
    manifest = read_manifest(retinanet['onnx_dir'])
    assert manifest['traced_shape'] == [1, 3, SIZE, SIZE]
    assert [p['name'] for p in manifest['parts']] == ['features', 'bbox_head']
    # CMT-Ti's position biases at 128x128: grids 32x32 to 4x4, keys
    # reduced 8, 4, 2 and 1 times
    sized = manifest['parts'][0]['size_inputs']
    assert sized['file'] == 'features.size_inputs.onnx'
    assert list(sized['output_shapes'].values()) == [[1, 1024, 16],
                                                     [2, 256, 16], [4, 64, 16],
                                                     [8, 16, 16]]
    assert manifest['dataset_meta']['classes'] == [
        'circle', 'square', 'triangle', 'cross'
    ]


def test_coco_ap_of_the_deployed_detector(retinanet):
    """tools/test.py --onnx: mmdet's test loop and evaluator on the
    deployed detector give the checkpoint's AP, and per image the same
    boxes."""
    tmp, options = retinanet['tmp'], retinanet['options']
    results = {}
    for name, source in (('torch', [retinanet['checkpoint']]),
                         ('onnx', ['--onnx', retinanet['onnx_dir']])):
        out = run_tool('tools/test.py', SYNTHETIC, *source, '--work-dir',
                       str(tmp / f'test_{name}'), '--out',
                       str(tmp / f'{name}.pkl'), '--cfg-options',
                       *options).stdout
        with open(tmp / f'{name}.pkl', 'rb') as f:
            results[name] = (coco_ap(out), pickle.load(f))
    (ap_torch, dets_torch), (ap_onnx, dets_onnx) = results['torch'], \
        results['onnx']
    assert ap_torch[0] > 0.2, ap_torch  # a detector worth comparing
    assert ap_onnx == pytest.approx(ap_torch, abs=0.005)
    assert len(dets_torch) == len(dets_onnx) == 4
    total = 0
    for a, b in zip(dets_torch, dets_onnx):
        assert a['img_id'] == b['img_id']
        a, b = kept(a), kept(b)
        match = match_detections(a, b, iou_thr=0.99)
        assert abs(len(a) - len(b)) <= 1
        assert match['matched'] >= min(len(a), len(b)) - 1, match
        assert match['max_score_diff'] < 1e-4
        total += match['matched']
    assert total >= 4


def test_attention_bias_probe_knows_onnxruntime():
    """The probe of ONNX Runtime's shared attention bias: 1.19's CPU kernel
    (the newest for Python 3.8) gets the second image wrong, 1.20 fixed it."""
    import onnxruntime
    from packaging.version import Version
    fixed = Version(onnxruntime.__version__) >= Version('1.20')
    assert runtime.attention_bias_broadcasts() == fixed


@pytest.mark.parametrize(
    'by_image', [False, True], ids=['as_onnxruntime_can', 'image_by_image'])
def test_any_input_size_from_one_export(retinanet, by_image, monkeypatch):
    """Traced at 1x3x128x128, run at 1x3x97x211 (no side a multiple of 32,
    odd map sizes in FPN's upsampling) and 2x3x160x96: every part's outputs
    match PyTorch on the same inputs, with the batch in one run where ONNX
    Runtime applies the shared position bias to each image, and image by
    image (what older ONNX Runtimes get)."""
    from mmdet.apis import init_detector
    if by_image:
        monkeypatch.setattr(runtime, 'attention_bias_broadcasts',
                            lambda: False)
    cfg = retinanet['cfg']
    model = init_detector(cfg, retinanet['checkpoint'], device='cpu')
    onnx_model = load_onnx_detector(retinanet['onnx_dir'], cfg)
    for shape in [(1, 3, 97, 211), (2, 3, 160, 96)]:
        inputs = torch.randn(*shape)
        errors = compare_parts(model, onnx_model, inputs)
        assert set(errors) == {'features', 'bbox_head'}
        for part, error in errors.items():
            assert error['max_rel'] < 1e-4, (shape, part, error)
        with torch.no_grad():
            cls_scores, _ = onnx_model._forward(inputs)
        # 9 anchors x 4 classes at strides 8 to 128, ceil(size / stride)
        assert [tuple(c.shape) for c in cls_scores
                ] == [(shape[0], 9 * 4, -(-shape[2] // s), -(-shape[3] // s))
                      for s in (8, 16, 32, 64, 128)]


def test_no_pytorch_weights_left_and_profiling(retinanet, tmp_path):
    cfg = retinanet['cfg']
    model = load_onnx_detector(
        retinanet['onnx_dir'],
        cfg,
        threads=1,
        profile_prefix=str(tmp_path / 'profile_'))
    assert list(model.parameters()) == []
    assert model.neck is None
    assert not hasattr(model.bbox_head, 'retina_cls')
    assert 'ONNX Runtime' in repr(model.backbone)
    with pytest.raises(UsageError, match='already runs ONNX graphs'):
        attach_onnx(model, retinanet['onnx_dir'])
    with torch.no_grad():
        model._forward(torch.randn(1, 3, 64, 96))
    files = end_profiling(model)
    # features, its size inputs, bbox_head
    assert len(files) == 3 and all(osp.isfile(f) for f in files)
    shares = op_time_shares(files)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    grouped = op_time_shares(files, grouped=True)
    assert sum(grouped.values()) == pytest.approx(1.0)
    # CMT's attention (ONNX Runtime's fused kernel) and norms, the
    # convolutions of all parts
    assert {'Conv', 'Attention', 'LayerNormalization',
            'MatMul'} <= set(grouped)
    assert not {'FusedConv', 'Softmax'} & set(grouped)


def test_position_biases_computed_once_per_size(retinanet):
    """The features graph takes CMT's position biases as inputs: computed
    by their own graph for a new input size only, equal to PyTorch's (the
    eval path's cached resize)."""
    from mmdet.apis import init_detector
    model = init_detector(
        retinanet['cfg'], retinanet['checkpoint'], device='cpu')
    onnx_model = load_onnx_detector(retinanet['onnx_dir'], retinanet['cfg'])
    features = onnx_modules(onnx_model)['features']
    runs = []
    session_run = features.size_session.run
    features.size_session = types.SimpleNamespace(
        run=lambda *a: runs.append(a[1]['image'].shape) or session_run(*a))
    with torch.no_grad():
        for shape in [(1, 3, 97, 211), (2, 3, 97, 211), (1, 3, 64, 64)]:
            onnx_model.extract_feat(torch.randn(*shape))
        biases = features.size_feeds(np.zeros((1, 3, 64, 64), np.float32))
        expected = model.backbone.position_biases(torch.zeros(1, 3, 64, 64))
    assert runs == [(1, 3, 97, 211), (1, 3, 64, 64)]  # not again for 2x3
    assert len(biases) == len(expected) == 4
    for got, want in zip(biases.values(), expected):
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(
            got, want.detach().numpy(), rtol=1e-5, atol=1e-5)


def small_two_stage_config(path):
    """A Mask R-CNN config with a small CMT, 32-channel FPN and heads, 4
    classes, 160x160 test images."""
    cfg = load_config(path)
    cfg.model.backbone.update(
        arch=SMALL_ARCH, init_cfg=None, drop_path_rate=0.)
    channels = 32
    cfg.model.neck.update(
        in_channels=SMALL_ARCH['embed_dims'], out_channels=channels)
    cfg.model.rpn_head.update(in_channels=channels, feat_channels=channels)
    roi = cfg.model.roi_head
    roi.bbox_roi_extractor.out_channels = channels
    roi.mask_roi_extractor.out_channels = channels
    for head in roi.bbox_head if isinstance(roi.bbox_head, list) else \
            [roi.bbox_head]:
        head.update(in_channels=channels, fc_out_channels=64, num_classes=4)
    roi.mask_head.update(
        in_channels=channels, conv_out_channels=channels, num_classes=4)
    cfg.test_dataloader.dataset.pipeline[1].scale = (160, 160)
    return cfg


@pytest.mark.parametrize('config', [
    'mask_rcnn_cmt_s_fpn_1x_coco.py', 'cascade_mask_rcnn_cmt_s_fpn_1x_coco.py'
])
def test_two_stage_detector(config, retinanet, tmp_path):
    """Random weights (the classifiers scaled down so that scores are not
    all saturated): RPN, RoI heads (each cascade stage) and mask head run in
    ONNX Runtime, proposals, RoIAlign and mask pasting in mmdet: the same
    boxes and masks as PyTorch."""
    from mmdet.apis import inference_detector
    from mmengine.registry import MODELS, init_default_scope
    cfg = small_two_stage_config(osp.join(ROOT, 'configs', config))
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(('rpn_cls', 'fc_cls')):
                module.weight.mul_(1e-2)
    model.cfg = cfg
    manifest = export_detector(model, cfg, str(tmp_path / 'onnx'), (96, 128))
    names = [p['name'] for p in manifest['parts']]
    if 'cascade' in config:
        assert names == ['features', 'rpn_head'] + [
            f'roi_head.bbox_head.{i}' for i in range(3)
        ] + [f'roi_head.mask_head.{i}' for i in range(3)]
    else:
        assert names == [
            'features', 'rpn_head', 'roi_head.bbox_head', 'roi_head.mask_head'
        ]
    onnx_model = load_onnx_detector(str(tmp_path / 'onnx'), cfg)
    assert list(onnx_model.parameters()) == []
    images = [
        osp.join(retinanet['root'], 'val2017', f'00000000000{i}.jpg')
        for i in (1, 2)
    ]
    for a, b in zip(
            inference_detector(model, images),
            inference_detector(onnx_model, images)):
        a, b = a.pred_instances, b.pred_instances
        assert len(a) == len(b) > 10
        assert b.bboxes.shape == (len(b), 4)
        assert b.masks.shape == (len(b), SIZE, SIZE)  # pasted on the image
        top = match_detections(a[:10], b[:10], iou_thr=0.99)
        assert top['matched'] == 10, top
        assert top['max_score_diff'] < 1e-5
        inter = (a.masks[:10] & b.masks[:10]).sum((1, 2))
        union = (a.masks[:10] | b.masks[:10]).sum((1, 2))
        ious = torch.where(union > 0, inter / union.clamp_min(1), 1.)
        assert ious.min() > 0.98, ious
    errors = compare_parts(model, onnx_model, torch.randn(2, 3, 75, 133))
    assert set(errors) == set(names)
    assert max(e['max_rel'] for e in errors.values()) < 1e-4, errors


def test_infer_with_onnx_draws_the_same_detections(retinanet, tmp_path):
    lines, pictures = {}, {}
    for name, source in (('torch', [retinanet['checkpoint']]),
                         ('onnx', ['--onnx', retinanet['onnx_dir']])):
        out = run_tool('tools/infer.py',
                       retinanet['image'], SYNTHETIC, *source, '--out-dir',
                       str(tmp_path / name), '--score-thr', '0.2').stdout
        lines[name] = [
            line.split() for line in out.splitlines()
            if line.strip().startswith(('circle', 'square', 'triangle',
                                        'cross'))
        ]
        pictures[name] = mmcv.imread(
            str(tmp_path / name / '000000000001.jpg')).astype(np.int16)
    assert len(lines['torch']) == len(lines['onnx']) > 0
    for a, b in zip(lines['torch'], lines['onnx']):
        assert a[0] == b[0]  # class
        assert float(a[1]) == pytest.approx(float(b[1]), abs=0.011)
        box_a = [float(v) for v in re.findall(r'-?\d+', ' '.join(a[2:]))]
        box_b = [float(v) for v in re.findall(r'-?\d+', ' '.join(b[2:]))]
        assert np.allclose(box_a, box_b, atol=1)
    assert np.abs(pictures['torch'] - pictures['onnx']).mean() < 0.5


def tool(name):
    """A tool's module, imported from tools/ under a name of its own."""
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    try:
        spec = importlib.util.spec_from_file_location(
            f'mmcmt_tool_{name}', osp.join(ROOT, 'tools', f'{name}.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.pop(0)


class Payload:
    """Code in a checkpoint: the safe loader must refuse it."""

    def __reduce__(self):
        return (os.system, ('echo pwned', ))


def test_error_paths(retinanet, tmp_path):
    options = retinanet['options']
    # through run_main: one line, exit code 2
    missing = str(tmp_path / 'missing')
    result = run_tool(
        'tools/test.py',
        SYNTHETIC,
        '--onnx',
        missing,
        '--cfg-options',
        *options,
        check=False)
    assert result.returncode == 2
    assert f"ONNX export not found: '{missing}' is not a folder" in \
        result.stderr
    assert 'Traceback' not in result.stderr

    os.makedirs(tmp_path / 'empty')
    with pytest.raises(FileNotFoundError, match='has no manifest.json'):
        tool('test').main([
            SYNTHETIC, '--onnx',
            str(tmp_path / 'empty'), '--cfg-options', *options
        ])
    for source in ([],
                   [retinanet['checkpoint'], '--onnx', retinanet['onnx_dir']]):
        with pytest.raises(UsageError, match='give a CHECKPOINT or --onnx'):
            tool('test').main([SYNTHETIC, *source, '--cfg-options', *options])
        with pytest.raises(UsageError, match='give a CHECKPOINT or --onnx'):
            tool('infer').main([
                retinanet['image'], SYNTHETIC, *source, '--out-dir',
                str(tmp_path / 'pictures')
            ])
    with pytest.raises(FileNotFoundError, match='has no manifest.json'):
        tool('infer').main([
            retinanet['image'], SYNTHETIC, '--onnx',
            str(tmp_path / 'empty'), '--out-dir',
            str(tmp_path / 'pictures')
        ])

    # an existing folder is never written to
    taken = tmp_path / 'taken'
    os.makedirs(taken)
    (taken / 'notes.txt').write_text('mine')
    with pytest.raises(UsageError, match='exists and is not empty'):
        tool('export_detector_onnx').main(
            [SYNTHETIC, retinanet['checkpoint'],
             str(taken)])
    assert os.listdir(taken) == ['notes.txt']
    assert (taken / 'notes.txt').read_text() == 'mine'
    with pytest.raises(FileExistsError, match='exists and is not empty'):
        export_detector(torch.nn.Module(), retinanet['cfg'], str(taken))

    # an untrusted checkpoint: one line, nothing written
    untrusted = str(tmp_path / 'untrusted.pth')
    torch.save(dict(state_dict={}, payload=Payload()), untrusted)
    result = run_tool(
        'tools/export_detector_onnx.py',
        SYNTHETIC,
        untrusted,
        str(tmp_path / 'never'),
        check=False)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'not trusted' in result.stderr and 'pwned' not in result.stdout
    assert not osp.exists(tmp_path / 'never')

    # a model that is not the exported one
    cfg = config_with(SYNTHETIC, options + ['model.bbox_head.num_classes=3'])
    with pytest.raises(
            UsageError, match='model.bbox_head is not the '
            'exported one'):
        load_onnx_detector(retinanet['onnx_dir'], cfg)
    cfg = config_with(SYNTHETIC,
                      options + ['model.data_preprocessor.bgr_to_rgb=False'])
    with pytest.raises(UsageError, match='data_preprocessor.bgr_to_rgb'):
        load_onnx_detector(retinanet['onnx_dir'], cfg)
    # a graph file missing
    from mmengine.registry import MODELS
    broken = tmp_path / 'broken'
    os.makedirs(broken)
    for name in os.listdir(retinanet['onnx_dir']):
        if name != 'bbox_head.onnx':
            os.symlink(osp.join(retinanet['onnx_dir'], name), broken / name)
    with pytest.raises(FileNotFoundError, match='bbox_head.onnx is missing'):
        attach_onnx(MODELS.build(retinanet['cfg'].model), str(broken))
    # an export of the first format (the graph computed the position
    # biases itself): refused, with the advice
    old = tmp_path / 'old'
    os.makedirs(old)
    manifest = open(osp.join(retinanet['onnx_dir'], 'manifest.json')).read()
    (old / 'manifest.json').write_text(
        manifest.replace('mmcmt-onnx-detector/2', 'mmcmt-onnx-detector/1'))
    with pytest.raises(UsageError, match='export the detector again'):
        load_onnx_detector(str(old))
