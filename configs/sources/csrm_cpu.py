# CSRM source sized for 2 CPU cores and synthetic data (`plabel synth scenes`, 128 px),
# warm-started from the small CPU CAM (configs/sources/cam_resnet18_cpu.py):
#   plabel source cam  --data D --out CAM  --config configs/sources/cam_resnet18_cpu.py
#   plabel source csrm --data D --out CSRM --config configs/sources/csrm_cpu.py \
#       --cam-checkpoint CAM/work/cam_final.pth
# CSRM's VOC defaults (ResNet-50 V1c, crop 512, batch 32, 15 epochs) are the component's own.
backbone = "resnet18_small"
output_stride = 8
decoder_channels = 32
skip_channels = 8
aspp_dilations = (1, 3, 6, 9)
representation_dim = 32
epochs = 8
# a few hundred images give a few dozen steps an epoch: the segmentation branch needs two
# epochs of class->segmentation alone, and a higher rate, before it supervises anything
warmup_epochs = 2
train_batch_size = 8
lr = 0.03
crop_size = 128
resize_long = (96, 160)
num_queries = 64
memory_size = 5000
memory_size_background = 5000
scales = (1.0, 0.5, 1.5, 2.0)
