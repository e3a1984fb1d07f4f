# U-Net with a VGG-16 encoder (seed 000, Table 1), at mmseg's 512x512 recipe: 4 GPUs x 4
# images, SGD lr 0.01, poly, 20k iterations. The encoder's layers are numbered as
# torchvision's vgg16.features: --pretrained vgg16-397923af.pth loads its ImageNet weights
# from a local file. num_classes follows --data (7: seed 000's six body parts + background).
_base_ = [
    './_base_plabel-512x512.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_20k.py'
]
crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(type='VGGEncoder', depth=16, widths=(64, 128, 256, 512, 512), with_bn=False),
    decode_head=dict(
        type='UNetHead',
        in_channels=[64, 128, 256, 512, 512, 512],
        decoder_channels=(256, 128, 64, 32, 16),
        dropout_ratio=0.0,
        num_classes=7,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
