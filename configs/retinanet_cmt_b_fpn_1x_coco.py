# RetinaNet + FPN with a CMT-B backbone on COCO 2017, 1x schedule: the CMT-S
# recipe (retinanet_cmt_s_fpn_1x_coco.py) with another arch.
_base_ = './retinanet_cmt_s_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/cmt_base.pth')),
    neck=dict(in_channels=[76, 152, 304, 608]))  # CMT-B embed dims
