# CAM source sized for 2 CPU cores and synthetic data (`plabel synth scenes`, 128 px).
# Use: plabel source cam --data D --out LS --config configs/sources/cam_resnet18_cpu.py
# IRN's defaults (ResNet-50 V1c, crop 512, 5 epochs) are the component's own defaults.
backbone = "resnet18_small"
output_stride = 8
epochs = 20
train_batch_size = 16
crop_size = 128
resize_long = (96, 160)
lr = 0.1
momentum = 0.9
scales = (1.0, 0.5, 1.5, 2.0)
