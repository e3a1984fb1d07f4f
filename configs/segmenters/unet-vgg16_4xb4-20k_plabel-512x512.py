# U-Net with a VGG-16 encoder (seed 000, Table 1), at mmseg's 512x512 recipe: 4 GPUs x 4
# images, SGD lr 0.01, poly, 20k iterations. The encoder's layers are numbered as
# torchvision's vgg16.features: --pretrained vgg16-397923af.pth loads its ImageNet weights
# from a local file. num_classes follows --data (7: seed 000's six body parts + background).
_base_ = ['./_base_unet-512x512.py']
model = dict(
    backbone=dict(type='VGGEncoder', depth=16, widths=(64, 128, 256, 512, 512), with_bn=False),
    decode_head=dict(in_channels=[64, 128, 256, 512, 512, 512]))
