# Cascade Mask R-CNN + FPN with a CMT-S backbone on COCO 2017, 3x schedule
# (36 epochs) with multi-scale training: the recipe of mmdet's Swin and
# ConvNeXt "ms-crop-3x" detectors. Model, optimizer and batch size (2 x 8 GPUs
# = 16) are those of cascade_mask_rcnn_cmt_s_fpn_1x_coco.py.
#
# Training augmentation (DETR's, as mmdet's Swin configs use it): random flip,
# then either a resize of the shorter side to one of 480, 512, ..., 800 (the
# longer at most 1333), or a resize to a shorter side of 400/500/600, a random
# crop of 384-600 pixels and the same 480-800 resize. Testing stays at
# 1333x800.
_base_ = './cascade_mask_rcnn_cmt_s_fpn_1x_coco.py'

multi_scale = [(1333, short) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [
                dict(
                    type='RandomChoiceResize',
                    scales=multi_scale,
                    keep_ratio=True)
            ],
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(1333, 400), (1333, 500), (1333, 600)],
                    keep_ratio=True),
                dict(
                    type='RandomCrop',
                    crop_type='absolute_range',
                    crop_size=(384, 600),
                    allow_negative_crop=True),
                dict(
                    type='RandomChoiceResize',
                    scales=multi_scale,
                    keep_ratio=True)
            ],
        ]),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

# 3x: 36 epochs, the learning rate x0.1 after epochs 27 and 33, linear
# warm-up over the first 1000 iterations.
max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=1000),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1)
]
