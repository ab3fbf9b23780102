"""Segmentation configs and tools, end to end on generated ADE-format data."""
import argparse
import glob
import os
import os.path as osp
import re
import sys

import cv2
import numpy as np
import pytest
import torch
from helpers import (ade_options, assert_metafile_figures, check_resume,
                     digest, free_port, get_flops_rows, metafile_model,
                     run_command, run_tool)

from mmcmt.checkpoint import RELEASE_URL, RELEASED_FILES
from mmcmt.datasets import make_synthetic_ade
from mmcmt.datasets.synthetic_ade import CLASSES
from mmcmt.engine import load_config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ADE_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', '*_ade20k.py')))
SYNTHETIC = osp.join(ROOT, 'configs', 'fpn_cmt_ti_synthetic_ade.py')
DIMS = {
    'tiny': [46, 92, 184, 368],
    'xs': [52, 104, 208, 416],
    'small': [64, 128, 256, 512],
    'base': [76, 152, 304, 608]
}


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('ade'))
    make_synthetic_ade(root, num_train=4, num_val=2, img_size=(112, 80))
    return root


def parse_options(options):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--o', nargs='+', action=DictAction)
    return parser.parse_args(['--o'] + options).o


def cpu_norms(cfg):
    """SyncBN -> BN everywhere in a config (SyncBatchNorm trains on GPUs
    only; the Runner reverts it by itself, a direct build does not)."""
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            if key == 'type' and value == 'SyncBN':
                cfg[key] = 'BN'
            else:
                cpu_norms(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            cpu_norms(value)


def small_config(path, root):
    """A config pointed at generated data, at a small size: ADE20K's resize
    to a short side of 512 (2048x512) becomes 128 (512x128), its 512x512
    crops 64x64 (no ImageNet weights here)."""
    cfg = load_config(path, parse_options(ade_options(root)))
    for split in ('train', 'val', 'test'):
        dataset = cfg[f'{split}_dataloader'].dataset
        for transform in dataset.pipeline:
            if transform.type in ('Resize', 'RandomResize'):
                transform.scale = (512, 128)
            if transform.type == 'RandomCrop':
                transform.crop_size = (64, 64)
                cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.backbone.init_cfg = None
    cpu_norms(cfg.model)
    return cfg


def build_model(cfg):
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


@pytest.mark.parametrize('config', ADE_CONFIGS + [SYNTHETIC], ids=osp.basename)
def test_config_trains_one_step_and_predicts(config, ade_root):
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DATASETS
    cfg = small_config(config, ade_root)
    model = build_model(cfg)
    assert not any(
        isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert len(dataset) == 4
    data = pseudo_collate([dataset[0], dataset[1]])
    batch = model.data_preprocessor(data, training=True)
    assert batch['inputs'].shape[-2:] == cfg.model.data_preprocessor.size
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    # no weight decay on norms and relative position biases
    decay = {
        id(p): g['weight_decay']
        for g in optim_wrapper.optimizer.param_groups
        for p in g['params']
    }
    stage = model.backbone.stages[0]
    assert decay[id(stage.relative_position_bias)] == 0
    assert decay[id(stage.blocks[0].norm1.weight)] == 0
    assert decay[id(stage.blocks[0].attn.q.weight)] == \
        cfg.optim_wrapper.optimizer.weight_decay > 0
    before = stage.blocks[0].attn.q.weight.detach().clone()
    model.train()
    losses = model.train_step(data, optim_wrapper)
    assert 'decode.loss_ce' in losses
    if 'upernet' in config:
        assert 'aux.loss_ce' in losses
    assert all(torch.isfinite(v) for v in losses.values())
    assert not torch.equal(before, stage.blocks[0].attn.q.weight)

    model.eval()
    test_set = DATASETS.build(cfg.test_dataloader.dataset)
    sample = test_set[0]
    # the whole image, resized to a short side of 128 for ADE20K configs
    # (80x112 -> 128x179), as it is for the synthetic one
    assert sample['inputs'].shape[-2:] == \
        ((80, 112) if config == SYNTHETIC else (128, 179))
    with torch.no_grad():
        results = model.test_step(pseudo_collate([sample]))
    num_classes = cfg.model.decode_head.num_classes
    # logits and labels at the original image's size (80x112)
    assert results[0].seg_logits.data.shape == (num_classes, 80, 112)
    labels = results[0].pred_sem_seg.data
    assert labels.shape == (1, 80, 112)
    assert 0 <= labels.min() and labels.max() < num_classes


@pytest.mark.parametrize('config', ADE_CONFIGS, ids=osp.basename)
def test_ade20k_config_settings(config):
    cfg = load_config(config)
    backbone = cfg.model.backbone
    dims = DIMS[backbone.arch]
    assert backbone.type == 'CMT' and backbone.out_indices == (0, 1, 2, 3)
    assert 'embed_dims' not in backbone and 'norm_cfg' not in backbone
    assert backbone.init_cfg == dict(
        type='Pretrained',
        checkpoint=f'{RELEASE_URL}/{RELEASED_FILES[backbone.arch]}')
    assert cfg.model.get('pretrained') is None
    assert cfg.model.decode_head.num_classes == 150
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    assert cfg.model.data_preprocessor.size == (512, 512)
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    assert cfg.train_dataloader.dataset.data_root == \
        'data/ade/ADEChallengeData2016'
    crop = [
        t for t in cfg.train_dataloader.dataset.pipeline
        if t.type == 'RandomCrop'
    ]
    assert crop[0].crop_size == (512, 512)
    assert cfg.test_evaluator.type == 'IoUMetric'
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == 'AdamW' and 'momentum' not in optimizer
    assert set(cfg.optim_wrapper.paramwise_cfg.custom_keys) == {
        'norm', 'relative_position_bias'
    }
    assert cfg.sync_bn == 'torch'
    assert cfg.custom_imports.imports == ['mmcmt']
    if osp.basename(config).startswith('upernet'):
        assert cfg.model.decode_head.type == 'UPerHead'
        assert cfg.model.decode_head.in_channels == dims
        aux = cfg.model.auxiliary_head
        assert aux.type == 'FCNHead' and aux.in_index == 2
        assert aux.in_channels == dims[2] and aux.num_classes == 150
        assert aux.norm_cfg.type == 'SyncBN'
        assert cfg.train_cfg.max_iters == 160000
        assert optimizer.lr == 6e-5 and optimizer.weight_decay == 0.01
        assert optimizer.betas == (0.9, 0.999)
        warmup, poly = cfg.param_scheduler
        assert (warmup.type, warmup.end) == ('LinearLR', 1500)
        assert (poly.type, poly.begin, poly.end, poly.power,
                poly.eta_min) == ('PolyLR', 1500, 160000, 1.0, 0.0)
        assert cfg.train_dataloader.batch_size * 8 == \
            cfg.auto_scale_lr.base_batch_size == 16
    else:
        assert cfg.model.neck.type == 'FPN'
        assert cfg.model.neck.in_channels == dims
        assert cfg.model.decode_head.type == 'FPNHead'
        assert cfg.train_cfg.max_iters == 80000
        assert optimizer.lr == 1e-4 and optimizer.weight_decay == 1e-4
        (poly, ) = cfg.param_scheduler
        assert (poly.type, poly.end, poly.power, poly.eta_min) == \
            ('PolyLR', 80000, 0.9, 0.0)
        assert cfg.train_dataloader.batch_size * 8 == \
            cfg.auto_scale_lr.base_batch_size == 32


@pytest.fixture(scope='module')
def synthetic_model():
    cfg = load_config(SYNTHETIC)
    cpu_norms(cfg.model)
    cfg.model.backbone.init_cfg = None  # random weights: no demo classifier
    return build_model(cfg).eval()


def predict(model, image, **test_cfg):
    """Logits of one (3, H, W) image, through the data preprocessor (which
    pads no test image)."""
    from mmengine.config import ConfigDict
    from mmseg.structures import SegDataSample
    model.test_cfg = ConfigDict(test_cfg)
    H, W = image.shape[-2:]
    sample = SegDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W)))
    with torch.no_grad():
        (result, ) = model.test_step(
            dict(inputs=[image], data_samples=[sample]))
    return result.seg_logits.data


def test_sliding_window_inference_at_sizes_not_divisible_by_32(
        synthetic_model):
    image = torch.randint(0, 256, (3, 100, 150), dtype=torch.uint8)
    logits = predict(
        synthetic_model,
        image,
        mode='slide',
        crop_size=(64, 64),
        stride=(43, 43))
    assert logits.shape == (len(CLASSES), 100, 150)
    assert torch.isfinite(logits).all()
    whole = predict(synthetic_model, image, mode='whole')
    assert whole.shape == (len(CLASSES), 100, 150)
    # windows see less context than the whole image
    assert not torch.allclose(logits, whole)
    # one window covering the image is whole-image inference
    single = predict(
        synthetic_model,
        image,
        mode='slide',
        crop_size=(128, 160),
        stride=(85, 107))
    torch.testing.assert_close(single, whole, rtol=1e-4, atol=1e-4)


def test_whole_image_inference_at_odd_size(synthetic_model):
    """512x683 in ADE20K reaches the backbone unpadded; here 96x131."""
    seen = []
    handle = synthetic_model.backbone.register_forward_hook(
        lambda module, args, outputs: seen.append(
            (tuple(args[0].shape), [tuple(o.shape[-2:]) for o in outputs])))
    try:
        image = torch.randint(0, 256, (3, 96, 131), dtype=torch.uint8)
        logits = predict(synthetic_model, image, mode='whole')
    finally:
        handle.remove()
    assert seen == [((1, 3, 96, 131), [(24, 33), (12, 17), (6, 9), (3, 5)])]
    assert logits.shape == (len(CLASSES), 96, 131)
    assert torch.isfinite(logits).all()


def test_train_test_infer_resume_cycle(ade_root, tmp_path):
    # No dropout in the head: mmengine's checkpoints do not hold the random
    # states, so after a resume the dropout masks (torch's generator) would
    # differ from the uninterrupted run's, and with them the weights. (The
    # flips do not: the iteration-based loop replays the skipped batches.)
    options = ade_options(ade_root) + [
        'train_dataloader.batch_size=2', 'train_cfg.max_iters=4',
        'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=2',
        'default_hooks.logger.interval=1', 'log_processor.window_size=1',
        'model.decode_head.dropout_ratio=0.0'
    ]
    full = str(tmp_path / 'full')
    out = run_tool('tools/train.py', SYNTHETIC, '--work-dir', full,
                   '--cfg-options', *options).stdout
    assert osp.isfile(osp.join(full, 'iter_2.pth'))
    assert osp.isfile(osp.join(full, 'iter_4.pth'))
    assert re.search(r'Iter\(val\) \[2/2\].*mIoU: [\d.]+', out), out[-2000:]

    # test: mmseg's IoUMetric table and summary, pictures, masks
    show, masks = str(tmp_path / 'show'), str(tmp_path / 'masks')
    out = run_tool('tools/test.py', SYNTHETIC,
                   osp.join(full, 'iter_4.pth'), '--work-dir',
                   str(tmp_path / 'test'), '--show-dir', show, '--out', masks,
                   '--cfg-options', *ade_options(ade_root)).stdout
    summary = re.search(r'aAcc: ([\d.]+) +mIoU: ([\d.]+) +mAcc: ([\d.]+)', out)
    assert summary, out[-2000:]
    assert 0 < float(summary[1]) <= 100
    for name in CLASSES:
        assert re.search(rf'^\| +{name} +\| +[\d.nan]+ +\| +[\d.nan]+ +\|$',
                         out, re.M), name
    pictures = sorted(os.listdir(osp.join(show, 'vis_data', 'vis_image')))
    assert pictures == [
        'test_ADE_val_00000001.jpg_0.png', 'test_ADE_val_00000002.jpg_0.png'
    ]
    picture = cv2.imread(osp.join(show, 'vis_data', 'vis_image', pictures[0]))
    assert picture.shape == (80, 224, 3)  # ground truth | prediction
    written = sorted(os.listdir(masks))
    assert written == ['ADE_val_00000001.png', 'ADE_val_00000002.png']
    mask = cv2.imread(osp.join(masks, written[0]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (80, 112)
    assert 1 <= mask.min() and mask.max() <= len(CLASSES)  # ADE values

    # infer: the predicted mask blended over the image
    image = osp.join(ade_root, 'images', 'validation', 'ADE_val_00000001.jpg')
    out = run_tool('tools/infer.py', image, SYNTHETIC,
                   osp.join(full, 'iter_4.pth'), '--out-dir',
                   str(tmp_path / 'infer')).stdout
    blended = cv2.imread(str(tmp_path / 'infer' / 'ADE_val_00000001.jpg'))
    original = cv2.imread(image)
    assert blended.shape == original.shape
    assert np.abs(blended.astype(int) - original).mean() > 5
    assert re.search(r'classes present: \w+', out) and 'wrote' in out

    # a run stopped after iteration 2 resumes: same iteration, lr, optimizer
    check_resume(SYNTHETIC, options, full, 'iter_2.pth', 'iter_4.pth',
                 str(tmp_path / 'resumed'), 'resumed epoch: 0, iter: 2')


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = run_tool(
        'tools/train.py',
        SYNTHETIC,
        '--work-dir',
        str(tmp_path),
        '--cfg-options',
        f'train_dataloader.dataset.data_root={tmp_path}/none',
        check=False)
    assert result.returncode != 0
    assert 'train_dataloader: dataset not found, expected' in result.stderr
    for path in ('images/training', 'annotations/training'):
        assert f'{tmp_path}/none/{path}' in result.stderr


def test_get_flops_reports_the_metafile_figures():
    """tools/get_flops.py on a segmentor with CMT-Ti at 1280x800 prints the
    CMT-Ti backbone's figures of configs/metafile.yml (``Backbone Only`` of
    the ImageNet model; the same numbers at the printed precision), from
    which the docs' tables are printed. The config's backbone was pretrained
    at 64x64: at the arch's own size (None) its position biases are the
    released ones."""
    out = run_tool('tools/get_flops.py', SYNTHETIC, '--shape', '800', '1280',
                   '--cfg-options',
                   'model.backbone.pretrain_img_size=None').stdout
    rows = get_flops_rows(out)
    assert set(rows) == {'whole model', 'backbone'}
    backbone = metafile_model('cmt-tiny_3rdparty_in1k')['Metadata']
    assert backbone['Arch'] == 'tiny'
    assert_metafile_figures(rows['backbone'], backbone['Backbone Only'])
    from mmcmt.models import CMT
    params = sum(p.numel() for p in CMT('tiny').parameters())
    assert rows['backbone']['params (M)'] == round(params / 1e6, 2)
    # the neck and the head add parameters and FLOPs
    whole, backbone = rows['whole model'], rows['backbone']
    assert whole['params (M)'] > backbone['params (M)'] + 0.2
    assert whole['FLOPs (G)'] > backbone['FLOPs (G)'] + 1
    assert whole['FLOPs without attention matmuls (G)'] == pytest.approx(
        whole['FLOPs (G)'] - whole['attention matmuls (G)'], abs=0.11)


def test_distributed_training_two_processes(ade_root, tmp_path):
    """torchrun, 2 CPU processes, gloo; the head's SyncBN (as in the ADE20K
    configs) normalises across them."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()))
    config = tmp_path / 'fpn_syncbn_head.py'
    config.write_text(
        f'_base_ = {SYNTHETIC!r}\n'
        'model = dict(decode_head=dict(norm_cfg=dict(\n'
        "    _delete_=True, type='SyncBN', requires_grad=True)))\n")
    options = ade_options(ade_root) + [
        'train_dataloader.batch_size=1', 'train_cfg.max_iters=2',
        'train_cfg.val_interval=2'
    ]
    result = run_command(
        [
            'bash', 'tools/dist_train.sh',
            str(config), '2', '--work-dir',
            str(tmp_path / 'work')
        ] + ['--cfg-options'] + options,
        env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Distributed launcher: pytorch' in result.stdout
    assert 'GPU number: 2' in result.stdout  # mmengine's name for world size
    assert re.search(
        r'\d+ SyncBatchNorm layers normalise across the 2 CPU '
        r'processes \(gloo\)', result.stdout)
    assert osp.isfile(osp.join(tmp_path, 'work', 'iter_2.pth'))
    assert re.search(r'mIoU: [\d.]+', result.stdout)


# The synthetic data set.


def test_synthetic_ade_layout_and_labels(ade_root):
    for split, prefix, n in (('training', 'ADE_train', 4), ('validation',
                                                            'ADE_val', 2)):
        images = sorted(os.listdir(osp.join(ade_root, 'images', split)))
        labels = sorted(os.listdir(osp.join(ade_root, 'annotations', split)))
        assert images == [f'{prefix}_{i:08d}.jpg' for i in range(1, n + 1)]
        assert labels == [f'{prefix}_{i:08d}.png' for i in range(1, n + 1)]
    values = set()
    for path in glob.glob(osp.join(ade_root, 'annotations', '*', '*.png')):
        label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        assert label.dtype == np.uint8 and label.shape == (80, 112)
        values |= set(np.unique(label).tolist())
        image = cv2.imread(
            path.replace('annotations', 'images').replace('.png', '.jpg'))
        assert image.shape == (80, 112, 3)
        # 0 (unlabelled) only along the edges between labelled regions
        for y, x in zip(*np.nonzero(label == 0)):
            around = label[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3]
            assert len(set(np.unique(around).tolist()) - {0}) >= 1
    assert values <= set(range(len(CLASSES) + 1))  # 0..5
    assert {0, 1} <= values and len(values) >= 4  # edges, background, shapes


def test_synthetic_ade_is_deterministic(tmp_path):
    a, b, c = (str(tmp_path / name) for name in 'abc')
    first = make_synthetic_ade(a, num_train=3, num_val=1, img_size=(64, 80))
    assert make_synthetic_ade(
        b, num_train=3, num_val=1, img_size=(64, 80)) == first
    make_synthetic_ade(c, num_train=3, num_val=1, img_size=(64, 80), seed=1)
    assert digest(a) == digest(b) != digest(c)
    assert first['training']['images'] == 3
    assert sum(first['training']['pixels']) == 3 * 64 * 80
    # an image does not depend on how many others are made
    make_synthetic_ade(
        str(tmp_path / 'd'), num_train=1, num_val=0, img_size=(64, 80))
    name = 'annotations/training/ADE_train_00000001.png'
    assert open(osp.join(a, name), 'rb').read() == \
        open(tmp_path / 'd' / name, 'rb').read()


def test_synthetic_ade_never_overwrites(tmp_path):
    root = str(tmp_path / 'ade')
    make_synthetic_ade(root, num_train=2, num_val=1, img_size=(64, 64))
    before = digest(root)
    with pytest.raises(FileExistsError, match='overwrite=True'):
        make_synthetic_ade(root, num_train=1, num_val=1, img_size=(64, 64))
    assert digest(root) == before
    # (by the tool's older name, which stays)
    result = run_tool('tools/make_synthetic_ade.py', root, check=False)
    assert result.returncode == 2  # a usage error, as in every tool
    assert 'exists and is not empty' in result.stderr
    assert digest(root) == before
    # with overwrite the earlier set is replaced, other files are kept
    open(osp.join(root, 'notes.txt'), 'w').write('mine')
    make_synthetic_ade(
        root, num_train=1, num_val=1, img_size=(64, 64), overwrite=True)
    assert len(os.listdir(osp.join(root, 'images', 'training'))) == 1
    assert open(osp.join(root, 'notes.txt')).read() == 'mine'
    with pytest.raises(ValueError, match='at least'):
        make_synthetic_ade(str(tmp_path / 'small'), img_size=(32, 64))


def test_make_synthetic_ade_tool(tmp_path):
    out = run_tool('tools/make_synthetic.py', 'ade', str(tmp_path / 'ade'),
                   '--num-train', '2', '--num-val', '1', '--size', '64',
                   '80').stdout
    assert 'training: 2 images' in out and 'validation: 1 images' in out
    image = cv2.imread(
        str(tmp_path / 'ade' / 'images' / 'validation' /
            'ADE_val_00000001.jpg'))
    assert image.shape == (64, 80, 3)
