# voc_isle.py with the CPU configs: small ResNet-18 CAM / IRNet / CSRM and a tiny DeepLabV3+
# on synthetic scenes. Two minutes on 2 CPU cores for 96 images of 96 px, e.g.
#   plabel synth scenes /tmp/sc --n 96 --size 96 && plabel synth scenes /tmp/val --n 32 --size 96 --seed 1
#   head -25 /tmp/sc/index.csv > /tmp/sc/labelled.csv     # 24 of the images, with their masks
#   plabel run configs/pipelines/voc_isle_small.py --data /tmp/sc/index.csv --work /tmp/isle \
#       --set labelled=/tmp/sc/labelled.csv --set val_data=/tmp/val/index.csv
_base_ = ['./voc_isle.py']
cam_config = '{config_dir}/../sources/cam_resnet18_cpu.py'
irnet_config = '{config_dir}/../sources/irnet_cpu.py'
csrm_config = '{config_dir}/../sources/csrm_cpu.py'
segmenter_config = '{config_dir}/../segmenters/deeplabv3plus_r50-d8_tiny-cpu-64x64.py'
affinity_epochs = 3
affinity_crop = 96
seg_iters = 300
seg_resume = False
seg_log_level = 'WARNING'
