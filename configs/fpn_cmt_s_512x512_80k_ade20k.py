# Semantic FPN with a CMT-S backbone on ADE20K (150 classes), 512x512 crops,
# 80k iterations.
#
# Everything not set here comes from mmseg's own base files: Semantic FPN
# (fpn_r50: FPN neck with 256 channels, FPNHead with 128, SyncBN in the
# head), ADE20K at data/ade/ADEChallengeData2016, the 80k-iteration schedule
# and the default runtime.
#
# The recipe is mmseg's Twins-PCPVT Semantic FPN
# (twins_pcpvt-s_fpn_fpnhead_8xb4-80k_ade20k-512x512.py), the PVT protocol:
# AdamW, lr 1e-4, weight decay 1e-4, poly decay (power 0.9), 4 images per GPU
# x 8 GPUs = 32:
#   bash tools/dist_train.sh configs/fpn_cmt_s_512x512_80k_ade20k.py 8
# (--auto-scale-lr scales the learning rate from base_batch_size=32).
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
custom_imports = dict(imports=['mmcmt'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
# the released ImageNet-1k weights; mmengine downloads them into torch's
# hub cache on first use (a local path works too: docs/weights.md)
pretrained = 'https://github.com/ggjy/CMT.pytorch/releases/download/release-v1/cmt_small.pth'  # noqa

model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,  # the base's ResNet weights; CMT's come via init_cfg
    backbone=dict(
        _delete_=True,  # drop every ResNet setting of the base model
        type='CMT',
        arch='small',
        out_indices=(0, 1, 2, 3),  # strides 4, 8, 16, 32
        drop_path_rate=0.1,
        norm_eval=False,  # BatchNorm statistics are trained: see sync_bn
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]),  # CMT-S embed dims
    decode_head=dict(num_classes=150))

# The backbone's BatchNorms become SyncBatchNorm in distributed training, as
# in upernet_cmt_s_512x512_160k_ade20k.py.
sync_bn = 'torch'

# AdamW as mmseg's Twins-PCPVT Semantic FPN uses it, with no weight decay on
# normalisation layers and relative position biases, as in our other configs.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, weight_decay=0.0001),
    paramwise_cfg=dict(
        custom_keys={
            'norm': dict(decay_mult=0.),
            'relative_position_bias': dict(decay_mult=0.),
        }))

# Poly decay with power 0.9 to 0. (The base schedule's eta_min=1e-4, which
# the Twins config inherits, would equal the learning rate and keep it
# constant.)
param_scheduler = [
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=0.9,
        begin=0,
        end=80000,
        by_epoch=False)
]

# 4 images per GPU x 8 GPUs = 32.
train_dataloader = dict(batch_size=4)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=32)
