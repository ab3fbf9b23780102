# RetinaNet + FPN with a CMT-Ti backbone on the small synthetic shapes data
# set: the route of the COCO configs (a backbone pretrained as a classifier,
# then detection) at a scale that runs on a CPU in minutes, no download
# needed.
#
#   python tools/make_synthetic.py coco data/synthetic_coco
#   python tools/pretrain_shapes.py data/synthetic_coco \
#       work_dirs/demo/cmt_ti_shapes.pth
#   python tools/train.py configs/retinanet_cmt_ti_fpn_synthetic.py
#
# (bash tools/demo.sh runs the three.) It is the CMT-Ti COCO recipe
# (retinanet_cmt_ti_fpn_1x_coco.py) with: the backbone started from a CMT-Ti
# classifier trained on crops of the shapes and saved in the layout of the
# released ImageNet checkpoints (loaded as those are, by init_cfg), 4
# classes, the 320x320 images resized to 256x256, batch 2, AdamW at a higher
# learning rate, a lighter neck and head and a short schedule (4 epochs of
# 200 iterations, validation after each). The figures (AP, objects found,
# time) are in configs/metafile.yml and docs/get_started.md.
_base_ = './retinanet_cmt_ti_fpn_1x_coco.py'

# The categories written by mmcmt.datasets.make_synthetic_coco (ids 1..4).
classes = ('circle', 'square', 'triangle', 'cross')
metainfo = dict(classes=classes)
data_root = 'data/synthetic_coco/'
img_scale = (256, 256)

# A lighter neck and head (64 channels, two convs) with GroupNorm. A
# randomly initialised CMT's stage outputs differ widely in scale (the
# unnormalised LPU residual grows the variance block after block), which the
# norm-free COCO neck and head pass on to the focal loss (a loss spike at the
# start). GroupNorm there, as usual for detectors trained from random
# weights, removes it (in the demo's earlier recipe from random weights, 4
# epochs: AP50 0.53 with it against 0.20 without; kept for the start from
# the shapes classifier, and for model.backbone.init_cfg=None). The lighter
# head and the 256x256 input take an iteration from 0.89 s (128 channels,
# 320x320) to 0.53 s on a 2-core CPU, the whole demo from 17 to 11.8 min
# (docs/get_started.md).
gn = dict(type='GN', num_groups=32, requires_grad=True)
# The shapes classifier of tools/pretrain_shapes.py (64x64 crops: its relative
# position biases are stored for that grid). tools/demo.sh names the one it
# has just trained; set model.backbone.init_cfg=None to start from random
# weights instead.
pretrained = 'work_dirs/demo/cmt_ti_shapes.pth'
model = dict(
    backbone=dict(
        drop_path_rate=0.,
        pretrain_img_size=64,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(out_channels=64, norm_cfg=gn),
    bbox_head=dict(
        num_classes=len(classes),
        in_channels=64,
        feat_channels=64,
        stacked_convs=2,
        norm_cfg=gn))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    dataset=dict(
        data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    dataset=dict(
        data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    dict(
        type='CocoMetric',
        ann_file=data_root + 'annotations/instances_val2017.json',
        metric='bbox',
        classwise=True),  # mmdet's per-class AP table
    # objects found with the right class (IoU >= 0.5, score >= 0.5)
    dict(type='FoundObjectsMetric')
]
test_evaluator = val_evaluator

# Schedule.
max_epochs = 4
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs,
        eta_min_ratio=0.05,
        begin=0,
        end=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True)
]
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=2)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2),
    # Pictures with one box per object: a detector still unsure between two
    # classes keeps a box of each on a shape (mmdet suppresses per class),
    # drawn as overlapping boxes whose readable label is often the wrong
    # one. This hook draws only the best box of each overlapping group,
    # whatever its class (shapes in this data set never overlap); the
    # evaluation keeps mmdet's per-class NMS, which COCO AP rewards (on a
    # checkpoint of the demo's earlier recipe from random weights: AP 0.611
    # with it, 0.538 with class-agnostic NMS).
    visualization=dict(type='ClassAgnosticDetVisualizationHook'))
log_processor = dict(window_size=10)
randomness = dict(seed=0)
