# Tiny U-Net with a VGG-16-shaped encoder (VGG-16's 2-2-3-3-3 conv stages, narrow, with BN)
# for CPU tests and demos: trains on 64x64 synthetic data in well under a minute.
_base_ = ['./_base_unet-tiny-64x64.py']
model = dict(
    backbone=dict(type='VGGEncoder', depth=16, widths=(8, 16, 32, 32, 32), with_bn=True),
    decode_head=dict(in_channels=[8, 16, 32, 32, 32, 32]))
