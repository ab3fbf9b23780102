"""Detection configs and tools, end to end on generated COCO-format data."""
import glob
import os
import os.path as osp
import re
import sys

import pytest
import torch
from helpers import (SYNTHETIC, assert_metafile_figures, check_resume,
                     coco_options, digest, free_port, get_flops_rows,
                     metafile_model, run_command, run_tool)

from mmcmt.checkpoint import RELEASE_URL, RELEASED_FILES
from mmcmt.datasets import make_synthetic_coco
from mmcmt.datasets.synthetic_coco import CLASSES
from mmcmt.engine import load_config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
COCO_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', '*_coco.py')))


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('coco'))
    make_synthetic_coco(root, num_train=4, num_val=2, img_size=(96, 96))
    return root + '/'


def small_config(path, root):
    """A config pointed at generated data, images resized to 128x96 (no
    ImageNet weights here)."""
    import argparse

    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--o', nargs='+', action=DictAction)
    options = parser.parse_args(['--o'] + coco_options(root, config=path)).o
    cfg = load_config(path, options)
    for split in ('train', 'val', 'test'):
        dataset = cfg[f'{split}_dataloader'].dataset
        dataset.metainfo = dict(classes=CLASSES)
        small_resizes(dataset.pipeline)
    cfg.model.backbone.init_cfg = None
    return cfg


def small_resizes(transforms):
    """Resize to 128x96 in every resize of a pipeline, also inside the
    random choices of multi-scale training."""
    for transform in transforms:
        if isinstance(transform, list):
            small_resizes(transform)
        elif transform.type == 'Resize':
            transform.scale = (128, 96)
        elif transform.type == 'RandomChoiceResize':
            transform.scales = [(128, 96), (112, 80)]
        elif transform.type == 'RandomChoice':
            small_resizes(transform.transforms)


@pytest.mark.parametrize(
    'config', COCO_CONFIGS + [SYNTHETIC], ids=osp.basename)
def test_config_trains_one_step_and_predicts(config, coco_root):
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DATASETS, MODELS, init_default_scope
    cfg = small_config(config, coco_root)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    model.init_weights()
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    data = pseudo_collate([dataset[0], dataset[1]])
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
        cfg.optim_wrapper.optimizer.weight_decay
    before = stage.blocks[0].attn.q.weight.detach().clone()
    model.train()
    losses = model.train_step(data, optim_wrapper)
    assert all(torch.isfinite(v) for v in losses.values())
    assert not torch.equal(before, stage.blocks[0].attn.q.weight)

    model.eval()
    test_set = DATASETS.build(cfg.test_dataloader.dataset)
    with torch.no_grad():
        results = model.test_step(pseudo_collate([test_set[0]]))
    assert len(results) == 1 and 'bboxes' in results[0].pred_instances
    if 'mask_rcnn' in config:
        assert 'masks' in results[0].pred_instances
    if 'cascade' in config:
        assert type(model).__name__ == 'CascadeRCNN'
        assert model.roi_head.num_stages == 3


@pytest.mark.parametrize('config', COCO_CONFIGS, ids=osp.basename)
def test_coco_config_settings(config):
    cfg = load_config(config)
    backbone = cfg.model.backbone
    dims = {
        'tiny': [46, 92, 184, 368],
        'xs': [52, 104, 208, 416],
        'small': [64, 128, 256, 512],
        'base': [76, 152, 304, 608]
    }
    assert backbone.type == 'CMT'
    assert cfg.model.neck.in_channels == dims[backbone.arch]
    # the released weights by URL, as mmdet's Swin/PVT configs name theirs
    assert backbone.init_cfg.checkpoint == cfg.pretrained == \
        f'{RELEASE_URL}/{RELEASED_FILES[backbone.arch]}'
    if '_3x_' in config:  # mmdet's Swin / ConvNeXt 3x multi-scale recipe
        assert cfg.train_cfg.max_epochs == 36
        assert cfg.param_scheduler[-1].milestones == [27, 33]
        choice = [
            t for t in cfg.train_dataloader.dataset.pipeline
            if t.type == 'RandomChoice'
        ]
        scales = choice[0].transforms[0][0].scales
        assert [min(s) for s in scales] == list(range(480, 801, 32))
    else:
        assert cfg.train_cfg.max_epochs == 12
        assert cfg.param_scheduler[-1].milestones == [8, 11]
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert 'momentum' not in cfg.optim_wrapper.optimizer
    assert cfg.train_dataloader.batch_size * 8 == \
        cfg.auto_scale_lr.base_batch_size == 16
    assert 'depth' not in backbone and 'norm_cfg' not in backbone
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    assert cfg.custom_imports.imports == ['mmcmt']


def test_train_test_resume_cycle(coco_root, tmp_path):
    # No random flips: mmengine's checkpoints do not hold the random
    # states, and the resumed run starts epoch 2 with numpy's state as
    # seeded, not as epoch 1 left it, so its flips (and then its weights)
    # would differ from the uninterrupted run's.
    options = coco_options(coco_root) + [
        'train_dataloader.batch_size=2', 'train_cfg.max_epochs=2',
        'train_cfg.val_interval=2', 'default_hooks.logger.interval=1',
        'log_processor.window_size=1',
        'train_dataloader.dataset.pipeline.3.prob=0.0'
    ]
    assert load_config(SYNTHETIC).train_dataloader.dataset.pipeline[3].type \
        == 'RandomFlip'
    full = str(tmp_path / 'full')
    run_tool('tools/train.py', SYNTHETIC, '--work-dir', full, '--cfg-options',
             *options)
    assert osp.isfile(osp.join(full, 'epoch_2.pth'))

    # test: COCO metrics printed, pictures written
    show = str(tmp_path / 'show')
    out = run_tool('tools/test.py', SYNTHETIC,
                   osp.join(full, 'epoch_2.pth'), '--work-dir',
                   str(tmp_path / 'test'), '--show-dir', show, '--out',
                   str(tmp_path / 'results.pkl'), '--cfg-options',
                   *coco_options(coco_root)).stdout
    assert re.search(
        r'coco/bbox_mAP: [\d.]+ +coco/bbox_mAP_50: [\d.]+ +'
        r'coco/bbox_mAP_75: [\d.]+', out), out[-2000:]
    assert len(os.listdir(show)) == 2
    assert osp.getsize(tmp_path / 'results.pkl') > 0

    # infer: one picture with its detections drawn
    image = osp.join(coco_root, 'val2017', '000000000001.jpg')
    out = run_tool('tools/infer.py', image, SYNTHETIC,
                   osp.join(full, 'epoch_2.pth'), '--out-dir',
                   str(tmp_path / 'infer'), '--score-thr', '0').stdout
    assert osp.isfile(tmp_path / 'infer' / '000000000001.jpg')
    assert 'wrote' in out

    # a run stopped after epoch 1 resumes: same iteration, lr, optimizer
    check_resume(SYNTHETIC, options, full, 'epoch_1.pth', 'epoch_2.pth',
                 str(tmp_path / 'resumed'), 'resumed epoch: 1, iter: 2')


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = run_tool(
        'tools/train.py',
        SYNTHETIC,
        '--work-dir',
        str(tmp_path),
        '--cfg-options',
        f'train_dataloader.dataset.data_root={tmp_path}/none/',
        check=False)
    assert result.returncode != 0
    assert 'train_dataloader: dataset not found, expected' in result.stderr
    assert f'{tmp_path}/none/annotations/instances_train2017.json' in \
        result.stderr


def test_missing_checkpoint_is_a_clear_error(coco_root, tmp_path):
    result = run_tool(
        'tools/test.py',
        SYNTHETIC,
        str(tmp_path / 'no.pth'),
        '--cfg-options',
        *coco_options(coco_root),
        check=False)
    assert result.returncode != 0
    assert f"checkpoint not found: '{tmp_path}/no.pth'" in result.stderr


def test_get_flops_reports_the_metafile_figures():
    """tools/get_flops.py on RetinaNet CMT-S at 1280x800 prints the figures
    of configs/metafile.yml (the same numbers at the printed precision),
    from which the docs' tables are printed: the detector's, and the CMT-S
    backbone's (``Backbone Only`` of the ImageNet model)."""
    out = run_tool('tools/get_flops.py',
                   'configs/retinanet_cmt_s_fpn_1x_coco.py', '--shape', '800',
                   '1280').stdout
    rows = get_flops_rows(out)
    assert set(rows) == {'whole model', 'backbone'}
    detector = metafile_model('retinanet_cmt_s_fpn_1x_coco')
    assert detector['Config'] == 'configs/retinanet_cmt_s_fpn_1x_coco.py'
    assert_metafile_figures(rows['whole model'], detector['Metadata'])
    backbone = metafile_model('cmt-small_3rdparty_in1k')['Metadata']
    assert backbone['Arch'] == 'small'
    assert_metafile_figures(rows['backbone'], backbone['Backbone Only'])
    from mmcmt.models import CMT
    params = sum(p.numel() for p in CMT('small').parameters())
    assert rows['backbone']['params (M)'] == round(params / 1e6, 2)


def test_make_synthetic_coco_tool(tmp_path):
    """tools/make_synthetic.py coco writes what make_synthetic_coco writes
    with the same arguments and says what it wrote; its older name,
    tools/make_synthetic_coco.py, writes the same files."""
    make_synthetic_coco(
        str(tmp_path / 'lib'), num_train=2, num_val=1, img_size=(96, 64))
    args = ['--num-train', '2', '--num-val', '1', '--size', '64', '96']
    out = run_tool('tools/make_synthetic.py', 'coco', str(tmp_path / 'tool'),
                   *args).stdout
    assert 'train2017: 2 images' in out and 'val2017: 1 images' in out
    assert f'classes: {", ".join(CLASSES)}' in out
    run_tool('tools/make_synthetic_coco.py', str(tmp_path / 'old'), *args)
    assert digest(tmp_path / 'tool') == digest(tmp_path / 'lib') == digest(
        tmp_path / 'old')


def test_distributed_training_two_processes(coco_root, tmp_path):
    """torchrun, 2 CPU processes, gloo: mmengine's distributed runner."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()))
    options = coco_options(coco_root) + [
        'train_dataloader.batch_size=1', 'train_cfg.max_epochs=1',
        'train_cfg.val_interval=1'
    ]
    result = run_command(
        [
            'bash', 'tools/dist_train.sh', SYNTHETIC, '2', '--work-dir',
            str(tmp_path)
        ] + ['--cfg-options'] + options,
        env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Distributed launcher: pytorch' in result.stdout
    assert 'GPU number: 2' in result.stdout  # mmengine's name for world size
    assert osp.isfile(osp.join(tmp_path, 'epoch_1.pth'))
    # the config's sync_bn = 'torch': the backbone's BatchNorms (the neck
    # and head use GroupNorm) normalise across the processes
    from mmcmt.models import CMT
    norms = sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in CMT('tiny').modules())
    assert (f'{norms} SyncBatchNorm layers normalise across the 2 CPU '
            'processes (gloo)') in result.stdout
    assert re.search(r'coco/bbox_mAP: [\d.]+', result.stdout)


def test_readme_custom_config_example(tmp_path):
    """The README's example of CMT in a config we do not ship builds and
    detects."""
    from mmengine.registry import MODELS, init_default_scope
    readme = open(osp.join(ROOT, 'README.md')).read()
    section = readme[readme.index('### CMT in your own config'):]
    example = re.search(r'```python\n(.*?)```', section, re.S)[1]
    path = tmp_path / 'fcos_cmt_s.py'
    path.write_text(example)
    cfg = load_config(str(path))
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    assert type(model).__name__ == 'FCOS'
    assert type(model.backbone).__name__ == 'CMT'
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 96, 128), mode='tensor')
    assert len(outs[0]) == 5  # P3-P7 classification maps


def test_pictures_draw_one_box_per_object():
    """The synthetic config's visualisation hook draws, of boxes that
    overlap whatever their classes, the best-scoring one; the sample that is
    evaluated is left as it was."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from mmcmt.visualization import suppress_across_classes
    sample = DetDataSample()
    sample.pred_instances = InstanceData(
        bboxes=torch.tensor([[10., 10, 50, 50], [12, 11, 50, 52],
                             [60, 60, 90, 90], [61, 60, 90, 91]]),
        scores=torch.tensor([0.45, 0.5, 0.9, 0.3]),
        labels=torch.tensor([0, 1, 2, 2]))
    drawn = suppress_across_classes(sample).pred_instances
    assert drawn.scores.tolist() == pytest.approx([0.9, 0.5])
    assert drawn.labels.tolist() == [2, 1]
    assert len(sample.pred_instances) == 4
    cfg = load_config(SYNTHETIC)
    assert cfg.default_hooks.visualization.type == \
        'ClassAgnosticDetVisualizationHook'
    assert not cfg.model.test_cfg.nms.get('class_agnostic', False)


def test_object_crops_are_centred_on_the_objects(coco_root):
    """Evaluation crops: one per object, centred on it (the crop's centre
    has the colour of the object's centre in its image), and one of
    background per image; training crops are augmented and differ."""
    import numpy as np

    from mmcmt.datasets import ObjectCrops
    crops = ObjectCrops(
        osp.join(coco_root, 'annotations', 'instances_train2017.json'),
        osp.join(coco_root, 'train2017'), 32)
    assert crops.classes == CLASSES + ('background', )
    images, labels = crops.sample()
    objects = len(crops.objects)
    assert objects > 0 and images.shape == (len(labels), 32, 32, 3)
    assert list(labels[:objects]) == [obj[-1] for obj in crops.objects]
    assert (labels[objects:] == len(CLASSES)).all()
    for crop, (i, x0, y0, x1, y1, _) in zip(images, crops.objects):
        centre = crops.images[i][round((y0 + y1) / 2), round((x0 + x1) / 2)]
        assert np.abs(crop[16, 16].astype(int) - centre).max() < 40
    again, _ = crops.sample()
    assert np.array_equal(again, images)
    augmented, augmented_labels = crops.sample(np.random.default_rng(1))
    assert sorted(augmented_labels) == sorted(labels)
    assert not np.array_equal(augmented, images)


def test_pretrain_tool_starts_the_detector_as_released_weights_do(
        coco_root, tmp_path):
    """tools/pretrain_shapes.py trains the classifier on object crops and
    writes the released layout; the detector config loads it through
    init_cfg Pretrained (the relative position biases resized from the
    crops' grid), and an existing file is never overwritten."""
    from mmdet.registry import MODELS

    from mmcmt.checkpoint import (convert_official_cmt, is_official_cmt,
                                  load_file)
    out = tmp_path / 'cmt_ti_shapes.pth'
    stdout = run_tool('tools/pretrain_shapes.py', coco_root, str(out),
                      '--epochs', '2', '--size', '32', '--batch-size',
                      '4').stdout
    accuracies = re.findall(
        r'epoch +\d/2 +loss [\d.]+ +val accuracy '
        r'([\d.]+)', stdout)
    assert len(accuracies) == 2, stdout
    assert all(0 <= float(a) <= 1 for a in accuracies)
    saved = load_file(str(out))
    assert is_official_cmt(saved['model'])
    assert saved['meta']['classes'] == list(CLASSES) + ['background']
    backbone = {
        k[len('backbone.'):]: v
        for k, v in convert_official_cmt(saved['model']).items()
        if k.startswith('backbone.')
    }

    cfg = small_config(SYNTHETIC, coco_root)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(out))
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    loaded = detector.backbone.state_dict()
    assert sorted(loaded) == sorted(backbone)
    for key, value in backbone.items():
        if key.endswith('relative_position_bias'):  # 32 px grid -> 160 px
            assert loaded[key].shape[0] == value.shape[0]
            assert loaded[key].shape[1:] != value.shape[1:]
        else:
            assert torch.equal(loaded[key], value), key

    before = out.read_bytes()
    result = run_tool(
        'tools/pretrain_shapes.py', coco_root, str(out), check=False)
    assert result.returncode != 0 and 'exists' in result.stderr
    assert out.read_bytes() == before


def test_found_objects_metric_counts_by_hand():
    """Objects found with the right class (IoU >= 0.5, score >= 0.5), one
    detection per object, the rest wrong: counted on hand-made boxes."""
    from mmcmt.evaluation import FoundObjectsMetric
    metric = FoundObjectsMetric()
    gt = torch.tensor([[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 10.]])
    boxes = torch.tensor([
        [0, 0, 10, 9],  # object 0, right class, IoU 0.9: found
        [1, 0, 10, 10],  # object 0 again, lower score: wrong
        [20, 20, 40, 30],  # object 1, IoU exactly 0.5: found
        [50, 0, 60, 10],  # object 2 but the wrong class: wrong
        [50, 0, 60, 10],  # object 2, right class, score < 0.5: not counted
    ])
    labels = torch.tensor([0, 0, 1, 3, 2])
    scores = torch.tensor([0.9, 0.8, 0.6, 0.7, 0.4])
    samples = [
        dict(
            gt_instances=dict(bboxes=gt, labels=torch.tensor([0, 1, 2])),
            pred_instances=dict(bboxes=boxes, scores=scores, labels=labels))
    ]
    metric.process({}, samples)
    assert metric.results == [(3, 2, 2)]
    assert metric.compute_metrics(metric.results) == dict(found=2 / 3, wrong=2)
    # no detections, and no objects
    assert metric.match(gt, torch.tensor([0, 1, 2]), boxes[:0], scores[:0],
                        labels[:0]) == (3, 0, 0)
    assert metric.match(gt[:0], labels[:0], boxes, scores, labels) == (0, 0, 5)
