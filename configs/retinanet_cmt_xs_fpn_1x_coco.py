# RetinaNet + FPN with a CMT-XS backbone on COCO 2017, 1x schedule: the CMT-S
# recipe (retinanet_cmt_s_fpn_1x_coco.py) with another arch.
_base_ = './retinanet_cmt_s_fpn_1x_coco.py'

pretrained = 'https://github.com/ggjy/CMT.pytorch/releases/download/release-v1/cmt_xs.pth'  # noqa

model = dict(
    backbone=dict(
        arch='xs', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[52, 104, 208, 416]))  # CMT-XS embed dims
