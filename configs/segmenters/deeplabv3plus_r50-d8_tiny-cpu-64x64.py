# Tiny DeepLabV3+ R50-D8 (mmseg's model at 1/16 of the width: ResNet-50 V1c 3-4-6-3 stages,
# output stride 8, separable ASPP, FCN auxiliary head) for CPU tests on 64x64 synthetic data.
_base_ = ['./_base_plabel-tiny-64x64.py']
# what both heads share; init_cfg=None is PyTorch's default init for conv_seg: mmseg's
# normal(std=0.01) keeps the foreground classes tied for hundreds of steps on tiny data
__head = dict(dropout_ratio=0.1, num_classes=7, norm_cfg={{_base_.norm_cfg}}, align_corners=False)
__loss = dict(type='CrossEntropyLoss', use_sigmoid=False)
model = dict(
    backbone=dict(
        type='ResNetV1c',
        depth=50,
        stem_channels=8,
        base_channels=4,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg={{_base_.norm_cfg}},
        norm_eval=False,
        style='pytorch',
        contract_dilation=True),
    decode_head=dict(
        type='DepthwiseSeparableASPPHead',
        in_channels=128,
        in_index=3,
        channels=16,
        dilations=(1, 12, 24, 36),
        c1_in_channels=16,
        c1_channels=8,
        **__head,
        loss_decode=dict(__loss, loss_weight=1.0),
        init_cfg=None),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=64,
        in_index=2,
        channels=8,
        num_convs=1,
        concat_input=False,
        **__head,
        loss_decode=dict(__loss, loss_weight=0.4),
        init_cfg=None))
