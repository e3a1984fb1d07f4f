# U-Net with a ResNet-50 encoder (seed 000, Table 1), at mmseg's 512x512 recipe: 4 GPUs x 4
# images, SGD lr 0.01, poly, 20k iterations. The encoder is torchvision's ResNet-50 layout
# (7x7 stem, pytorch style), so --pretrained resnet50-0676ba61.pth loads its ImageNet
# weights from a local file. num_classes follows --data (7: seed 000's six body parts + bg).
_base_ = ['./_base_unet-512x512.py']
model = dict(
    backbone=dict(
        type='ResNetEncoder',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        strides=(1, 2, 2, 2),
        dilations=(1, 1, 1, 1),
        style='pytorch',
        norm_cfg={{_base_.norm_cfg}},
        norm_eval=False),
    decode_head=dict(in_channels=[64, 256, 512, 1024, 2048]))
