# RetinaNet + FPN with a CMT-Ti backbone on COCO 2017, 1x schedule: the CMT-S
# recipe (retinanet_cmt_s_fpn_1x_coco.py) with another arch.
_base_ = './retinanet_cmt_s_fpn_1x_coco.py'

pretrained = 'https://github.com/ggjy/CMT.pytorch/releases/download/release-v1/cmt_tiny.pth'  # noqa

model = dict(
    backbone=dict(
        arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[46, 92, 184, 368]))  # CMT-Ti embed dims
