# DeepLabV3+ R50-D8, PASCAL VOC 2012 (+ SBD), 512x512: mmseg's recipe
# deeplabv3plus_r50-d8_4xb4-20k_voc12aug-512x512 (4 GPUs x 4 images, SGD lr 0.01, poly,
# 20k iterations, SyncBN), trained on a plabel label set instead of SegmentationClassAug.
# Pretrained encoder from a local file only: --pretrained resnet50_v1c-2cccc1ad.pth
# (open-mmlab's ResNet-50 V1c); nothing is downloaded.
_base_ = [
    'mmseg::_base_/models/deeplabv3plus_r50-d8.py', './_base_plabel-512x512.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_20k.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    decode_head=dict(num_classes=21),
    auxiliary_head=dict(num_classes=21))
