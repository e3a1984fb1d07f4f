# Tiny U-Net with a VGG-16-shaped encoder (VGG-16's 2-2-3-3-3 conv stages, narrow, with BN)
# for CPU tests and demos: trains on 64x64 synthetic data in well under a minute.
_base_ = ['./_base_plabel-tiny-64x64.py']
model = dict(
    type='EncoderDecoder',
    data_preprocessor={{_base_.data_preprocessor}},
    backbone=dict(type='VGGEncoder', depth=16, widths=(8, 16, 32, 32, 32), with_bn=True),
    decode_head=dict(
        type='UNetHead',
        in_channels=[8, 16, 32, 32, 32, 32],
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
