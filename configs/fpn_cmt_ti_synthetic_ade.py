# Semantic FPN with a CMT-Ti backbone on the small synthetic shapes
# segmentation data set: the route of the ADE20K configs (a backbone
# pretrained as a classifier, then segmentation) at a scale that runs on a
# CPU in minutes, no download needed.
#
#   python tools/make_synthetic.py ade data/synthetic_ade
#   python tools/make_synthetic.py coco data/synthetic_coco
#   python tools/pretrain_shapes.py data/synthetic_coco \
#       work_dirs/demo_seg/cmt_ti_shapes.pth
#   python tools/train.py configs/fpn_cmt_ti_synthetic_ade.py
#
# (bash tools/demo_seg.sh runs them.) It is the Semantic FPN recipe
# (fpn_cmt_s_512x512_80k_ade20k.py) with CMT-Ti started from a classifier
# trained on crops of the shapes of the detection data set (as ADE20K models
# start from ImageNet weights: another data set, the same kind of objects),
# saved in the layout of the released checkpoints and loaded by init_cfg; 5
# classes, 128x128 images, a lighter neck and head with GroupNorm, online
# hard example mining, AdamW at a higher learning rate and a short schedule
# (600 iterations at batch 8, validation every 100). The figures (mIoU, time,
# and the same schedule from random weights) are in configs/metafile.yml and
# docs/user_guides/segmentation.md.
_base_ = './fpn_cmt_s_512x512_80k_ade20k.py'

# The classes written by mmcmt.datasets.make_synthetic_ade (label PNG values
# 1..5, read with reduce_zero_label=True; 0 marks unlabelled shape edges).
classes = ('background', 'circle', 'square', 'triangle', 'cross')
palette = [[120, 120, 120], [220, 20, 60], [0, 142, 255], [255, 200, 0],
           [0, 200, 80]]
metainfo = dict(classes=classes, palette=palette)
data_root = 'data/synthetic_ade'
# mmseg's ADE20KDataset accepts only a subset of ADE's own 150 classes; the
# base class reads the same layout with any classes.
dataset_type = 'BaseSegDataset'
crop_size = (128, 128)

# A lighter neck and head (64 channels) with GroupNorm, in the neck too. The
# randomly initialised CMT's stage outputs differ widely in scale (at 128x128,
# standard deviations of about 3 at strides 4, 8 and 32 but 190 at stride
# 16: the unnormalised LPU residual grows the variance block after block in
# the ten-block third stage). Through the norm-free lateral convolutions of
# the COCO-style FPN, the stride-16 map then swamps the finer levels in the
# top-down sum; GroupNorm on the laterals (and in the head, independent of
# the batch size) keeps every level in play. (400 iterations on 400 images:
# mIoU 29.2 with it, 26.5 without: both learnt the background and hardly the
# shapes; online hard example mining, below, did most of the rest.)
gn = dict(type='GN', num_groups=16, requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    # The shapes classifier of tools/pretrain_shapes.py (64x64 crops: its
    # relative position biases are stored for that grid). tools/demo_seg.sh
    # names the one it has just trained; set model.backbone.init_cfg=None to
    # start from random weights instead.
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.,
        pretrain_img_size=64,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='work_dirs/demo_seg/cmt_ti_shapes.pth')),
    neck=dict(in_channels=[46, 92, 184, 368], out_channels=64, norm_cfg=gn),
    decode_head=dict(
        in_channels=[64, 64, 64, 64],
        channels=64,
        num_classes=len(classes),
        norm_cfg=gn,
        # The background covers about 90% of the pixels: online hard example
        # mining keeps the loss on the pixels still misclassified (the
        # shapes) once the background is learnt (the pixels whose class has
        # a probability under 0.7, and at least 2000 per 128x128 image).
        sampler=dict(type='OHEMPixelSampler', thresh=0.7, min_kept=2000)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),  # reduce_zero_label: the dataset's
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),  # reduce_zero_label: the dataset's
    dict(type='PackSegInputs')
]
dataset = dict(
    type=dataset_type,
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True)
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# Schedule.
max_iters = 600
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=100)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='PolyLR',
        eta_min=0.,
        power=1.0,
        begin=50,
        end=max_iters,
        by_epoch=False)
]
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=0.01),
    clip_grad=dict(max_norm=10, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=8)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(
        type='CheckpointHook',
        by_epoch=False,
        interval=max_iters // 2,
        max_keep_ckpts=2))
log_processor = dict(by_epoch=False, window_size=10)
randomness = dict(seed=0)
