# Tiny U-Net with a ResNet-50-shaped encoder (ResNet-50's 3-4-6-3 bottleneck stages at 1/16
# of the width) for CPU tests and demos on 64x64 synthetic data.
_base_ = ['./_base_plabel-tiny-64x64.py']
model = dict(
    type='EncoderDecoder',
    data_preprocessor={{_base_.data_preprocessor}},
    backbone=dict(
        type='ResNetEncoder',
        depth=50,
        stem_channels=8,
        base_channels=4,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        strides=(1, 2, 2, 2),
        dilations=(1, 1, 1, 1),
        style='pytorch',
        norm_cfg={{_base_.norm_cfg}},
        norm_eval=False),
    decode_head=dict(
        type='UNetHead',
        in_channels=[8, 16, 32, 64, 128],
        decoder_channels=(32, 16, 16, 8, 8),
        dropout_ratio=0.0,
        num_classes=7,
        norm_cfg={{_base_.norm_cfg}},
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        # PyTorch's default init for conv_seg: mmseg's normal(std=0.01) keeps the
        # foreground classes tied for hundreds of steps on tiny data
        init_cfg=None),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
