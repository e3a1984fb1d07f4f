# voc_isle.py with the CPU configs: small ResNet-18 CAM / IRNet / CSRM and a tiny DeepLabV3+
# on synthetic scenes (`plabel synth scenes --size 96`). Minutes on 2 CPU cores, e.g.
#   plabel synth scenes /tmp/sc --n 96 --size 96 && plabel synth scenes /tmp/lab --n 24 --size 96 --seed 1
#   plabel run configs/pipelines/voc_isle_small.py --data /tmp/sc/index.csv --work /tmp/isle \
#       --set labelled=/tmp/lab/index.csv --set val_data=/tmp/lab/index.csv
_base_ = ['./voc_isle.py']
cam_config = '{config_dir}/../sources/cam_resnet18_cpu.py'
irnet_config = '{config_dir}/../sources/irnet_cpu.py'
csrm_config = '{config_dir}/../sources/csrm_cpu.py'
segmenter_config = '{config_dir}/../segmenters/deeplabv3plus_r50-d8_tiny-cpu-64x64.py'
seg_iters = 300
seg_resume = False
seg_log_level = 'WARNING'
