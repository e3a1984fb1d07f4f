# Tiny U-Net with a ResNet-50-shaped encoder (ResNet-50's 3-4-6-3 bottleneck stages at 1/16
# of the width) for CPU tests and demos on 64x64 synthetic data.
_base_ = ['./_base_unet-tiny-64x64.py']
model = dict(
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
    decode_head=dict(in_channels=[8, 16, 32, 64, 128]))
