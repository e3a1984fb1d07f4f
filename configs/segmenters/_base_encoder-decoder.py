# The model frame the plabel configs here share (as mmseg's _base_/models/*.py set it): an
# EncoderDecoder whose SegDataPreProcessor normalises with ImageNet's mean and std. Configs
# add the pad size (data_preprocessor = dict(size=crop_size), also in model), backbone, heads.
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
