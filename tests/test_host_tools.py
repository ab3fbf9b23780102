"""mmdet's and mmseg's own tools, APIs and inferencers on CMT configs and on
checkpoints trained here: the installed packages' files
(``<package>/.mim/tools/``), not copies, and ``mim``.

The user's configs inherit mmcmt's synthetic configs and point at generated
data, as a user's own config would. Every subprocess is a fresh Python that
imports mmcmt only through the config's ``custom_imports``: that alone must
make mmengine's checkpoints loadable by torch's safe loader.
"""
import os.path as osp
import re
import shutil
import sys
from collections import Counter

import pytest
import torch
from helpers import ROOT, run_command

from mmcmt.checkpoint.safe_load import load_file
from mmcmt.datasets import make_synthetic_ade, make_synthetic_coco


def host_tool(package, name):
    module = __import__(package)
    path = osp.join(osp.dirname(module.__file__), '.mim', 'tools', name)
    assert osp.isfile(path), path
    return path


def run(args, cwd, check=True):
    """Run a command in ``cwd`` under the tests' time limit."""
    result = run_command([str(a) for a in args], cwd=cwd)
    if check and result.returncode:
        raise AssertionError(f'{args} failed:\n{result.stdout[-2000:]}\n'
                             f'{result.stderr[-3000:]}')
    return result


def python(*args, cwd, check=True):
    return run([sys.executable] + list(args), cwd, check)


# ----------------------------------------------------------------- detection
DET_CONFIG = """\
# the shipped COCO recipe with its 1x schedule (LinearLR warm-up, then
# MultiStepLR), optimizer wrapper and hooks, on a data set of the user's own
_base_ = '{base}'
data_root = '{root}/'
ann = data_root + 'annotations/instances_val2017.json'
metainfo = dict(classes=('circle', 'square', 'triangle', 'cross'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor'))
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, metainfo=metainfo,
                                     pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, metainfo=metainfo,
                                   pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=ann, classwise=True)
test_evaluator = val_evaluator
# no ImageNet weights here; keep every box so that COCO metrics exist
model = dict(backbone=dict(init_cfg=None), bbox_head=dict(num_classes=4),
             test_cfg=dict(score_thr=0.0))
# two epochs of two iterations
train_cfg = dict(max_epochs=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1))
"""


@pytest.fixture(scope='module')
def det(tmp_path_factory):
    """A user's detection config that inherits the shipped
    configs/retinanet_cmt_ti_fpn_1x_coco.py (its 1x schedule, optimizer
    wrapper and hooks), trained for 2 epochs by mmdet's tools/train.py."""
    tmp = tmp_path_factory.mktemp('det')
    make_synthetic_coco(
        str(tmp / 'coco'), num_train=4, num_val=2, img_size=(96, 96))
    config = tmp / 'my_retinanet_cmt.py'
    config.write_text(
        DET_CONFIG.format(
            base=osp.join(ROOT, 'configs', 'retinanet_cmt_ti_fpn_1x_coco.py'),
            root=tmp / 'coco'))
    work = tmp / 'work'
    out = python(
        host_tool('mmdet', 'train.py'), config, '--work-dir', work,
        cwd=tmp).stdout
    assert 'coco/bbox_mAP' in out
    for name in ('epoch_1.pth', 'epoch_2.pth'):
        assert (work / name).is_file()
    return dict(
        tmp=tmp, config=config, work=work, checkpoint=work / 'epoch_2.pth')


@pytest.fixture(scope='module')
def det_results(det):
    """mmdet's tools/test.py: the COCO table, and the raw results."""
    results = det['tmp'] / 'results.pkl'
    out = python(
        host_tool('mmdet', 'test.py'),
        det['config'],
        det['checkpoint'],
        '--work-dir',
        det['tmp'] / 'test',
        '--out',
        results,
        cwd=det['tmp']).stdout
    return out, results


def test_mmdet_test_prints_coco_table(det_results):
    out, results = det_results
    assert re.search(
        r'coco/bbox_mAP: [\d.]+ +coco/bbox_mAP_50: [\d.]+ +'
        r'coco/bbox_mAP_75: [\d.]+', out), out[-2000:]
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95' in out
    # the per-class table of the synthetic config (classwise=True)
    assert re.search(r'\| circle +\|', out)
    assert results.stat().st_size > 0


def test_mmdet_resume(det):
    work = det['tmp'] / 'resumed'
    work.mkdir()
    shutil.copy(det['work'] / 'epoch_1.pth', work)
    out = python(
        host_tool('mmdet', 'train.py'),
        det['config'],
        '--work-dir',
        work,
        '--resume',
        work / 'epoch_1.pth',
        cwd=det['tmp']).stdout
    assert 'resumed epoch: 1, iter: 2' in out
    resumed = load_file(str(work / 'epoch_2.pth'))
    assert resumed['meta']['epoch'] == 2 and resumed['meta']['iter'] == 4


def test_checkpoints_hold_the_shipped_schedules(det, seg):
    """What mmdet's and mmseg's train.py wrote with the shipped configs'
    schedulers (MultiStepLR's milestones are a Counter, which torch 2.1's
    own safe list lacks) loads safely, with those schedulers' state."""
    schedulers = load_file(str(det['checkpoint']))['param_schedulers']
    assert [s['end'] for s in schedulers] == [500, 12]
    assert schedulers[1]['milestones'] == Counter({8: 1, 11: 1})
    schedulers = load_file(str(seg['checkpoint']))['param_schedulers']
    assert [s['end'] for s in schedulers] == [1500, 160000]


@pytest.mark.parametrize('run', ['det', 'seg'])
def test_mmcmt_tools_on_host_checkpoints(run, request):
    """mmcmt's tools/test.py and train.py --resume read the checkpoints that
    mmdet's and mmseg's train.py wrote."""
    fixture = request.getfixturevalue(run)
    tmp, first = fixture['tmp'], {'det': 'epoch_1.pth', 'seg': 'iter_2.pth'}
    out = python(
        osp.join(ROOT, 'tools', 'test.py'),
        fixture['config'],
        fixture['checkpoint'],
        '--work-dir',
        tmp / 'mmcmt_test',
        cwd=tmp).stdout
    assert re.search(r'coco/bbox_mAP: [\d.]+|mIoU: [\d.]+', out), out[-2000:]
    work = tmp / 'mmcmt_resumed'
    work.mkdir()
    shutil.copy(fixture['work'] / first[run], work)
    out = python(
        osp.join(ROOT, 'tools', 'train.py'),
        fixture['config'],
        '--work-dir',
        work,
        '--resume',
        work / first[run],
        cwd=tmp).stdout
    assert {
        'det': 'resumed epoch: 1, iter: 2',
        'seg': 'resumed epoch: 0, iter: 2'
    }[run] in out


def test_mmdet_get_flops(det):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    out = python(
        host_tool('mmdet', 'analysis_tools/get_flops.py'),
        det['config'],
        '--num-images',
        '1',
        cwd=det['tmp']).stdout
    params = float(re.search(r'Params: ([\d.]+)M', out)[1])
    assert float(re.search(r'Flops: ([\d.]+)G', out)[1]) > 0
    cfg = Config.fromfile(str(det['config']))
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    assert params == pytest.approx(
        sum(p.numel() for p in model.parameters()) / 1e6, abs=0.001)


def test_mmdet_benchmark(det):
    tool = host_tool('mmdet', 'analysis_tools/benchmark.py')
    out = python(
        tool,
        det['config'],
        '--task',
        'dataset',
        '--max-iter',
        '4',
        '--num-warmup',
        '1',
        '--log-interval',
        '1',
        '--dataset-type',
        'train',
        cwd=det['tmp']).stdout
    assert re.search(r'Overall fps: [\d.]+ img/s', out)
    if not torch.cuda.is_available():
        # mmdet's inference benchmark moves the model to CUDA
        # unconditionally; tools/benchmark.py of mmcmt covers the CPU.
        result = python(
            tool,
            det['config'],
            '--checkpoint',
            det['checkpoint'],
            '--task',
            'inference',
            '--max-iter',
            '2',
            cwd=det['tmp'],
            check=False)
        assert result.returncode != 0
        # a CPU build of torch, or a CUDA build without a GPU
        assert 'Torch not compiled with CUDA enabled' in result.stderr or \
            'Found no NVIDIA driver' in result.stderr


def test_mmdet_browse_dataset(det):
    out_dir = det['tmp'] / 'browse'
    python(
        host_tool('mmdet', 'analysis_tools/browse_dataset.py'),
        det['config'],
        '--output-dir',
        out_dir,
        '--not-show',
        cwd=det['tmp'])
    assert len(list(out_dir.iterdir())) == 4  # the training images


def test_mmdet_confusion_matrix(det, det_results):
    _, results = det_results
    save_dir = det['tmp'] / 'confusion'
    python(
        host_tool('mmdet', 'analysis_tools/confusion_matrix.py'),
        det['config'],
        results,
        save_dir,
        '--score-thr',
        '0.0',
        cwd=det['tmp'])
    assert (save_dir / 'confusion_matrix.png').stat().st_size > 0


DET_APIS = """
import sys
import numpy as np
from mmdet.apis import DetInferencer, inference_detector, init_detector
config, checkpoint, image, out_dir = sys.argv[1:]
assert 'mmcmt' not in sys.modules
model = init_detector(config, checkpoint, device='cpu')
assert 'mmcmt' in sys.modules  # through the config's custom_imports
assert type(model.backbone).__name__ == 'CMT'
boxes = inference_detector(model, image).pred_instances.bboxes.numpy()
inferencer = DetInferencer(model=config, weights=checkpoint, device='cpu')
result = inferencer(image, out_dir=out_dir, no_save_pred=False)
same = np.asarray(result['predictions'][0]['bboxes']).reshape(-1, 4)
assert len(boxes) > 0 and same.shape == boxes.shape, (boxes.shape, same.shape)
assert np.allclose(same, boxes, atol=1e-2), abs(same - boxes).max()
print('boxes', len(boxes))
"""


def test_mmdet_apis_and_inferencer(det):
    image = det['tmp'] / 'coco' / 'val2017' / '000000000001.jpg'
    out_dir = det['tmp'] / 'inferencer'
    out = python(
        '-c',
        DET_APIS,
        det['config'],
        det['checkpoint'],
        image,
        out_dir,
        cwd=det['tmp']).stdout
    assert re.search(r'boxes \d+', out)
    assert (out_dir / 'vis' / image.name).is_file()
    assert (out_dir / 'preds' / '000000000001.json').is_file()


def mim(*args, cwd):
    return run([osp.join(osp.dirname(sys.executable), 'mim')] + list(args),
               cwd)


def test_mim_train_and_test(det):
    work = det['tmp'] / 'mim'
    mim('train',
        'mmdet',
        det['config'],
        '--gpus',
        '0',
        '--work-dir',
        work,
        '--cfg-options',
        'train_cfg.max_epochs=1',
        'train_cfg.val_interval=1',
        cwd=det['tmp'])
    assert (work / 'epoch_1.pth').is_file()
    out = mim(
        'test',
        'mmdet',
        det['config'],
        '--checkpoint',
        work / 'epoch_1.pth',
        '--work-dir',
        work / 'test',
        cwd=det['tmp']).stdout
    assert re.search(r'coco/bbox_mAP: [\d.]+', out)


# -------------------------------------------------------------- segmentation
SEG_CONFIG = """\
# the shipped ADE20K recipe with its 160k schedule (LinearLR warm-up, then
# PolyLR), optimizer wrapper and hooks, on a data set of the user's own
_base_ = '{base}'
data_root = '{root}'
classes = ('background', 'circle', 'square', 'triangle', 'cross')
palette = [[120, 120, 120], [220, 20, 60], [0, 142, 255], [255, 200, 0],
           [0, 200, 80]]
crop_size = (128, 128)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None),
    decode_head=dict(num_classes=5, channels=64),
    auxiliary_head=dict(num_classes=5, channels=64))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
dataset = dict(type='BaseSegDataset', data_root=data_root,
               metainfo=dict(classes=classes, palette=palette),
               img_suffix='.jpg', seg_map_suffix='.png',
               reduce_zero_label=True)
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(dataset, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=4, val_interval=4)
default_hooks = dict(checkpoint=dict(interval=2), logger=dict(interval=1))
"""


@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    """A user's segmentation config that inherits the shipped
    configs/upernet_cmt_ti_512x512_160k_ade20k.py (its 160k schedule,
    optimizer wrapper and hooks), trained for 4 iterations by mmseg's
    tools/train.py."""
    tmp = tmp_path_factory.mktemp('seg')
    make_synthetic_ade(
        str(tmp / 'ade'), num_train=4, num_val=2, img_size=(112, 80))
    config = tmp / 'my_upernet_cmt.py'
    config.write_text(
        SEG_CONFIG.format(
            base=osp.join(ROOT, 'configs',
                          'upernet_cmt_ti_512x512_160k_ade20k.py'),
            root=tmp / 'ade'))
    work = tmp / 'work'
    out = python(
        host_tool('mmseg', 'train.py'), config, '--work-dir', work,
        cwd=tmp).stdout
    assert re.search(r'mIoU: [\d.]+', out)
    assert (work / 'iter_2.pth').is_file() and (work / 'iter_4.pth').is_file()
    return dict(
        tmp=tmp, config=config, work=work, checkpoint=work / 'iter_4.pth')


def test_mmseg_test_prints_miou(seg):
    out = python(
        host_tool('mmseg', 'test.py'),
        seg['config'],
        seg['checkpoint'],
        '--work-dir',
        seg['tmp'] / 'test',
        cwd=seg['tmp']).stdout
    assert re.search(r'aAcc: [\d.]+ +mIoU: [\d.]+ +mAcc: [\d.]+', out)
    assert re.search(r'\| +triangle +\|', out)  # the per-class table


def test_mmseg_resume(seg):
    work = seg['tmp'] / 'resumed'
    work.mkdir()
    shutil.copy(seg['work'] / 'iter_2.pth', work)
    out = python(
        host_tool('mmseg', 'train.py'),
        seg['config'],
        '--work-dir',
        work,
        '--resume',
        '--cfg-options',
        f'load_from={work / "iter_2.pth"}',
        cwd=seg['tmp']).stdout
    assert 'resumed epoch: 0, iter: 2' in out
    assert load_file(str(work / 'iter_4.pth'))['meta']['iter'] == 4


def test_mmseg_get_flops_fails_for_its_own_reason(seg):
    """mmseg 1.2.2's get_flops passes both ``input_shape`` and ``inputs`` to
    mmengine's counter, which mmengine 0.10 refuses, whatever the model;
    docs/user_guides/host_tools.md says so and names tools/get_flops.py
    (tested elsewhere)."""
    result = python(
        host_tool('mmseg', 'analysis_tools/get_flops.py'),
        seg['config'],
        '--shape',
        '128',
        '128',
        cwd=seg['tmp'],
        check=False)
    assert result.returncode != 0
    assert '"input_shape" and "inputs" cannot be both set' in result.stderr


SEG_APIS = """
import sys
import numpy as np
from mmseg.apis import MMSegInferencer, inference_model, init_model
config, checkpoint, image, out_dir = sys.argv[1:]
assert 'mmcmt' not in sys.modules
model = init_model(config, checkpoint, device='cpu')
assert type(model.backbone).__name__ == 'CMT'
mask = inference_model(model, image).pred_sem_seg.data[0].numpy()
inferencer = MMSegInferencer(model=config, weights=checkpoint, device='cpu')
result = inferencer(image, out_dir=out_dir)
assert mask.shape == (80, 112) == result['predictions'].shape
assert (result['predictions'] == mask).mean() > 0.99
print('classes', sorted(np.unique(mask).tolist()))
"""


def test_mmseg_apis_and_inferencer(seg):
    image = next((seg['tmp'] / 'ade' / 'images' / 'validation').iterdir())
    out_dir = seg['tmp'] / 'inferencer'
    out = python(
        '-c',
        SEG_APIS,
        seg['config'],
        seg['checkpoint'],
        image,
        out_dir,
        cwd=seg['tmp']).stdout
    assert re.search(r'classes \[[\d, ]+\]', out)
    assert (out_dir / 'vis' / image.name).is_file()


@pytest.mark.parametrize('run', ['det', 'seg'])
def test_plot_curves_of_host_runs(run, request):
    """tools/plot_curves.py plots what mmdet's and mmseg's train.py logged:
    losses, learning rate and the evaluation (epoch- and iteration-based
    loops); it never writes over an existing plot unless told to."""
    from mmcmt.utils.curves import read_scalars
    work = request.getfixturevalue(run)['work']
    train, evaluations = read_scalars(str(work))
    assert len(train) == 4 and all('loss' in e for e in train)
    assert len(evaluations) == 1
    out = python(
        osp.join(ROOT, 'tools', 'plot_curves.py'), work, cwd=ROOT).stdout
    plot = work / 'training_curves.png'
    assert f'training curves: {plot}' in out
    import cv2
    assert cv2.imread(str(plot)).shape[1] > 1000  # three panels
    again = python(
        osp.join(ROOT, 'tools', 'plot_curves.py'), work, cwd=ROOT, check=False)
    assert again.returncode == 2 and 'exists' in again.stderr
