# CAM source at IRN's VOC settings (ResNet-50 V1c, output stride 16, 5 epochs, batch 16,
# crop 512, long side 320-640, lr 0.1): the component's own defaults, spelt out. ImageNet
# weights from a local file only: --set pretrained=resnet50_v1c.pth (or torchvision's); with them
# the stem, layer1 and layer2 stay frozen (frozen_stages 2, IRN's resnet50_cam).
backbone = "resnet50_v1c"
output_stride = 16
epochs = 5
train_batch_size = 16
crop_size = 512
resize_long = (320, 640)
lr = 0.1
