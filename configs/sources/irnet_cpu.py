# IRNet source sized for 2 CPU cores and synthetic data (`plabel synth scenes`, 96-128 px),
# after a CAM set from configs/sources/cam_resnet18_cpu.py (its backbone is reused, frozen).
# Use: plabel source irnet --data D --cam CAM_SET --out LS --config configs/sources/irnet_cpu.py
# IRN's defaults (3 epochs, batch 32, crop 512, lr 0.1) are the component's own defaults.
epochs = 3
train_batch_size = 8
crop_size = 96
resize_long = (72, 120)
lr = 0.1
# 96 px images give 24x24 walk grids, 1/5 of a VOC image's width: 2^8 steps mix a whole
# grid; 2^3 keep IRN's reach relative to the image (measured best on synthetic scenes).
log_steps = 3
