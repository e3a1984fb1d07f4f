# evolving_seqmerge.py with the CPU configs, for `plabel demo` and tests: small ResNet-18 CAM,
# tiny U-Nets on 64x64 images, annotations simulated from the ground truth. A few minutes
# on 2 CPU cores for a few hundred images.
_base_ = ['./evolving_seqmerge.py']
annotations = 'ground-truth'
cam_config = '{config_dir}/../sources/cam_resnet18_cpu.py'
vgg_config = '{config_dir}/../segmenters/unet-vgg16_tiny-cpu-64x64.py'
resnet_config = '{config_dir}/../segmenters/unet-r50_tiny-cpu-64x64.py'
seg_iters = 300
# a tiny training restarts rather than resumes: mmseg's augmentations draw from the global
# numpy RNG, which a resumed run does not restore, and a rerun must give the same table
seg_resume = False
seg_log_level = 'WARNING'
