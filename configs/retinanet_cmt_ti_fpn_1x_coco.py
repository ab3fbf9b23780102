# RetinaNet + FPN with a CMT-Ti backbone on COCO 2017, 1x schedule: the CMT-S
# recipe (retinanet_cmt_s_fpn_1x_coco.py) with another arch.
_base_ = './retinanet_cmt_s_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='tiny',
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/cmt_tiny.pth')),
    neck=dict(in_channels=[46, 92, 184, 368]))  # CMT-Ti embed dims
