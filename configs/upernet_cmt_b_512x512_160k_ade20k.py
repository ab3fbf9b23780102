# UperNet with a CMT-B backbone on ADE20K, 512x512 crops, 160k iterations: the
# CMT-S recipe (upernet_cmt_s_512x512_160k_ade20k.py) with another arch.
_base_ = './upernet_cmt_s_512x512_160k_ade20k.py'

pretrained = 'https://github.com/ggjy/CMT.pytorch/releases/download/release-v1/cmt_base.pth'  # noqa

model = dict(
    backbone=dict(
        arch='base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[76, 152, 304, 608]),  # CMT-B embed dims
    auxiliary_head=dict(in_channels=304))  # stage 3
