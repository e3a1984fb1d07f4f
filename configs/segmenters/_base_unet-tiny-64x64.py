# Tiny U-Net decoder (UNetHead, 1/8-1/16 of the 512x512 U-Nets' widths) on the tiny CPU
# recipe of _base_plabel-tiny-64x64.py. Configs add the encoder and decode_head.in_channels.
_base_ = ['./_base_plabel-tiny-64x64.py']
model = dict(
    decode_head=dict(
        type='UNetHead',
        decoder_channels=(32, 16, 16, 8, 8),
        dropout_ratio=0.0,
        num_classes=7,
        norm_cfg={{_base_.norm_cfg}},
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        # PyTorch's default init for conv_seg: mmseg's normal(std=0.01) keeps the
        # foreground classes tied for hundreds of steps on tiny data
        init_cfg=None))
