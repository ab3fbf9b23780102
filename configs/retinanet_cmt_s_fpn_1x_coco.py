# RetinaNet + FPN with a CMT-S backbone on COCO 2017, 1x schedule (12 epochs).
#
# Everything not set here comes from mmdet's own base files: RetinaNet with
# FPN (retinanet_r50_fpn), COCO 2017 detection data at data/coco/ (resize to
# 1333x800 keeping the aspect ratio, random horizontal flip), the 1x schedule
# (12 epochs, linear warm-up over the first 500 iterations, learning rate x0.1
# after epochs 8 and 11) and the default runtime.
#
# Batch size: 2 images per GPU x 8 GPUs = 16, as in the paper's protocol:
#   bash tools/dist_train.sh configs/retinanet_cmt_s_fpn_1x_coco.py 8
# (mmdet's tools/dist_train.sh). Training on another number of GPUs changes
# the total batch; pass --auto-scale-lr to scale the learning rate linearly
# from base_batch_size=16.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
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
        # All four stages, as mmdet's PVT RetinaNet does; FPN starts at the
        # second one (start_level=1, stride 8) and adds P6/P7 on its input.
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        norm_eval=False,  # BatchNorm statistics are trained: see sync_bn
        # The ImageNet-1k weights (the released checkpoint or one converted
        # by mmcmt; either layout loads).
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        type='FPN',
        in_channels=[64, 128, 256, 512],  # CMT-S embed dims
        out_channels=256,
        start_level=1,
        add_extra_convs='on_input',
        num_outs=5))

# BatchNorm. CMT has BatchNorms in its stem, in every block's IRFFN (three) and
# after every spatial-reduction convolution of the attention: 100 layers in
# CMT-S (besides 54 LayerNorms), unlike the LayerNorm-only PVT and Swin. Two
# images per GPU give noisy per-GPU batch statistics, so, in distributed
# training, mmengine's Runner turns every BatchNorm of the model into a torch
# SyncBatchNorm, which computes the statistics over the whole batch of 16
# images. The alternative, norm_eval=True (as for ResNet in mmdet), would keep
# all these layers at running statistics estimated on 160-256 pixel ImageNet
# crops, while the features they normalise change with the 800x1333 detection
# inputs and with fine-tuning: as the BatchNorms sit inside every block, their
# statistics are part of how the whole network adapts. Without distributed
# training (one GPU, or the CPU) the Runner ignores sync_bn and the BatchNorms
# use the statistics of each (small) batch; set model.backbone.norm_eval=True
# there if the batch is very small.
sync_bn = 'torch'

# Optimizer. The CMT paper does not state the optimizer of its COCO
# experiments, only that it follows the protocol of the PVT results it
# compares against; so this is mmdet's PVT RetinaNet recipe: AdamW, lr 1e-4,
# weight decay 1e-4, batch 16. _delete_ drops the base SGD's momentum.
# No weight decay on normalisation layers (every parameter whose name
# contains 'norm': the backbone's norm/norm1..3 LayerNorms and BatchNorms) nor
# on the relative position biases. mmengine matches custom_keys as substrings
# of the full parameter name, longest key first.
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

# The learning rate above is for a total batch of 16 (2 x 8 GPUs).
auto_scale_lr = dict(enable=False, base_batch_size=16)
