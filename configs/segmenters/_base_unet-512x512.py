# U-Net at mmseg's 512x512 recipe (seed 000, Table 1): 4 GPUs x 4 images, SGD lr 0.01, poly,
# 20k iterations, SyncBN, the data of _base_plabel-512x512.py; the decoder (UNetHead) of both
# U-Nets. Configs add the encoder (backbone) and its skip widths (decode_head.in_channels).
# num_classes follows --data (7: seed 000's six body parts + background).
_base_ = [
    './_base_plabel-512x512.py', './_base_encoder-decoder.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_20k.py'
]
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(size={{_base_.crop_size}})
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(
        type='UNetHead',
        decoder_channels=(256, 128, 64, 32, 16),
        dropout_ratio=0.0,
        num_classes=7,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
