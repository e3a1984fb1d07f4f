# CSRM source sized for 2 CPU cores and synthetic data (`plabel synth scenes`, 128 px),
# warm-started from the small CPU CAM (configs/sources/cam_resnet18_cpu.py):
#   plabel source cam  --data D --out CAM  --config configs/sources/cam_resnet18_cpu.py
#   plabel source csrm --data D --out CSRM --config configs/sources/csrm_cpu.py \
#       --cam-checkpoint CAM/work/cam_final.pth
# CSRM's VOC defaults (ResNet-50 V1c, crop 512, batch 32, 15 epochs) are the component's own.
backbone = "resnet18_small"
output_stride = 8
decoder_channels = 64
skip_channels = 16
aspp_dilations = (1, 3, 6, 9)
representation_dim = 64
epochs = 5
warmup_epochs = 1
train_batch_size = 16
crop_size = 128
resize_long = (96, 160)
num_queries = 64
memory_size = 5000
memory_size_background = 5000
# the training CRF costs more than the network at this size; the output CRF stays on
c2s_crf = False
scales = (1.0, 0.5, 1.5, 2.0)
