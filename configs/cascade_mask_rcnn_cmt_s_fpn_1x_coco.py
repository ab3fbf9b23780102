# Cascade Mask R-CNN + FPN with a CMT-S backbone on COCO 2017 (boxes and
# instance masks), 1x schedule (12 epochs): a detector beyond the paper's
# table. The backbone, BatchNorm handling, optimizer and batch size are those
# of retinanet_cmt_s_fpn_1x_coco.py (see its comments): 2 images per GPU x 8
# GPUs = 16, AdamW lr 1e-4, weight decay 1e-4, no decay on norms and on the
# relative position biases.
#
# Everything else comes from mmdet's base files: Cascade Mask R-CNN with FPN
# (cascade-mask-rcnn_r50_fpn: three box stages at IoU 0.5/0.6/0.7), COCO 2017
# instance data at data/coco/ (resize to 1333x800 keeping the aspect ratio,
# random flip), the 1x schedule and the default runtime.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmcmt'], allow_failed_imports=False)

# the released ImageNet-1k weights; mmengine downloads them into torch's
# hub cache on first use (a local path works too: docs/weights.md)
pretrained = 'https://github.com/ggjy/CMT.pytorch/releases/download/release-v1/cmt_small.pth'  # noqa

model = dict(
    backbone=dict(
        _delete_=True,  # drop every ResNet setting of the base model
        type='CMT',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    # The FPN takes all four stages (P2-P5, plus P6 by max pooling).
    neck=dict(in_channels=[64, 128, 256, 512]))

# SyncBatchNorm over the whole batch in distributed training (ignored
# otherwise); see retinanet_cmt_s_fpn_1x_coco.py.
sync_bn = 'torch'

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        _delete_=True, type='AdamW', lr=0.0001, weight_decay=0.0001),
    paramwise_cfg=dict(
        custom_keys={
            'norm': dict(decay_mult=0.),
            'relative_position_bias': dict(decay_mult=0.),
        }))

train_dataloader = dict(batch_size=2, num_workers=2)

auto_scale_lr = dict(enable=False, base_batch_size=16)
