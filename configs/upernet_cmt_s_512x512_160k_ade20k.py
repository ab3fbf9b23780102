# UperNet with a CMT-S backbone on ADE20K (150 classes), 512x512 crops,
# 160k iterations.
#
# Everything not set here comes from mmseg's own base files: UperNet
# (upernet_swin: UPerHead on the four stages, auxiliary FCNHead on the third,
# SyncBN in both heads), ADE20K at data/ade/ADEChallengeData2016 (random
# resize to 2048x512 at 0.5-2.0, random 512x512 crop, flip, photometric
# distortion; test at 2048x512 keeping the ratio, whole-image inference), the
# 160k-iteration schedule and the default runtime.
#
# The optimizer and schedule are mmseg's Swin UperNet recipe (swin-tiny-...
# upernet_8xb2-160k_ade20k-512x512.py): AdamW, lr 6e-5, betas (0.9, 0.999),
# weight decay 0.01, linear warm-up over 1500 iterations, then poly decay
# (power 1.0) to 0.
#
# Batch size: 2 images per GPU x 8 GPUs = 16:
#   bash tools/dist_train.sh configs/upernet_cmt_s_512x512_160k_ade20k.py 8
# On another number of GPUs, pass --auto-scale-lr to scale the learning rate
# linearly from base_batch_size=16.
#
# Test images are not padded (a 512x683 image reaches the backbone as it is;
# CMT pads internally to a multiple of 32 and crops its outputs back). For
# sliding-window inference add
#   --cfg-options model.test_cfg.mode=slide \
#       model.test_cfg.crop_size=[512,512] model.test_cfg.stride=[341,341]
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmcmt'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
norm_cfg = dict(type='SyncBN', requires_grad=True)  # in the heads
# the released ImageNet-1k weights; mmengine downloads them into torch's
# hub cache on first use (a local path works too: docs/weights.md)
pretrained = 'https://github.com/ggjy/CMT.pytorch/releases/download/release-v1/cmt_small.pth'  # noqa

model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,  # drop every Swin setting of the base model
        type='CMT',
        arch='small',
        out_indices=(0, 1, 2, 3),  # strides 4, 8, 16, 32
        drop_path_rate=0.1,
        norm_eval=False,  # BatchNorm statistics are trained: see sync_bn
        # The ImageNet-1k weights (the released checkpoint or one converted
        # by mmcmt; either layout loads).
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(
        in_channels=[64, 128, 256, 512],  # CMT-S embed dims
        num_classes=150,
        norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels=256,  # stage 3 (in_index=2)
        num_classes=150,
        norm_cfg=norm_cfg))

# BatchNorm in the backbone: CMT has about a hundred BatchNorms inside its
# blocks (see configs/retinanet_cmt_s_fpn_1x_coco.py); with 2 images per GPU,
# distributed training turns them into SyncBatchNorm too, as the heads'.
sync_bn = 'torch'

# AdamW as mmseg's Swin UperNet uses it. No weight decay on normalisation
# layers (every parameter whose name contains 'norm': the backbone's
# LayerNorms and BatchNorms) nor on the relative position biases; mmengine
# matches custom_keys as substrings of the parameter names.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'norm': dict(decay_mult=0.),
            'relative_position_bias': dict(decay_mult=0.),
        }))

param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        begin=1500,
        end=160000,
        by_epoch=False,
    )
]

# 2 images per GPU x 8 GPUs = 16.
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=16)
