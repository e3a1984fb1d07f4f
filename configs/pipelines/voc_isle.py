# Seed 001 (ISLE): four pseudo-label components from one CAM (dense CRF, AffinityNet random
# walk, IRNet, CSRM), the walk and IRNet refined by the dense CRF as the paper refines its
# components (CSRM's labels already are), a class-wise ensemble learned on a small labelled
# subset (dataset-level class IoU, the paper's Table 3), then DeepLabV3+ trained on the
# ensemble's labels and scored on held-out ground truth.
#
#   plabel run configs/pipelines/voc_isle.py --data VOCdevkit/VOC2012 --work W \
#       --set labelled=LABELLED.csv --set val_data=VAL.csv --set cam.pretrained=resnet50_v1c.pth
#
# `--data` is what gets pseudo labels (VOC train); `labelled` a few of those images with
# their masks, where ISLE learns its class -> component table (score on the others);
# `val_data` the segmenter's test set. Weights only from local files.
# `voc_isle_small.py` is this pipeline with the CPU configs.

labelled = None  # CSV index of some of --data's images with masks: ISLE's selection set
val_data = None  # CSV index (or VOC root) with masks: where the segmenter is scored
cam_config = '{config_dir}/../sources/cam_resnet50_voc.py'
irnet_config = None  # IRN's defaults are the component's own
csrm_config = None  # CSRM's VOC defaults are the component's own
segmenter_config = '{config_dir}/../segmenters/deeplabv3plus_r50-d8_4xb4-20k_voc12aug-512x512.py'
affinity_epochs = 8  # AffinityNet (PSA's training, on PSA's two-alpha CRF labels)
affinity_crop = 448
# the dense CRF after the walk and IRNet: PSA's softmax recipe on their walked scores (the walk's own
# background plane; IRNet's foreground against a constant background, IRN's sem_seg_bg_thres)
irnet_crf_threshold = 0.25
seg_iters = 20000
seg_resume = True
seg_log_level = 'INFO'

stages = [
    # IR labels (fg 0.30 / bg 0.05 with the 255 band) for IRNet, CAM scores for all (AffinityNet's PSA labels)
    dict(name='cam', step='source', type='cam', config='{cam_config}', mode='ir_labels'),
    dict(name='crf', step='refine', input='@cam', type='crf', from_scores=True),
    dict(name='randomwalk', step='refine', input='@cam', type='randomwalk', affinity='affinitynet', recipe='psa',
         affinity_epochs='{affinity_epochs}', affinity_crop='{affinity_crop}'),
    dict(name='irnet', step='source', type='irnet', config='{irnet_config}', cam='@cam'),
    dict(name='csrm', step='source', type='csrm', config='{csrm_config}', cam_checkpoint='@cam/work/cam_final.pth'),
    # seed 001: "we use dCRF to the AffinityNet predictions"; IRNet's walk gets the same
    dict(name='randomwalk_crf', step='refine', input='@randomwalk', type='crf', recipe='softmax'),
    dict(name='irnet_crf', step='refine', input='@irnet', type='crf', recipe='softmax',
         threshold='{irnet_crf_threshold}'),
    dict(name='isle', step='combine', type='isle', inputs=['@crf', '@randomwalk_crf', '@irnet_crf', '@csrm'],
         select_on='{labelled}'),
    dict(name='deeplabv3plus', step='command', run=[
        ['segment', 'train', '--config', '{segmenter_config}', '--data', '{data}', '--labels', '@isle',
         '--work', '{out}', '--iters', '{seg_iters}', '--cfg-options', 'resume={seg_resume}',
         'log_level={seg_log_level}'],
        ['segment', 'test', '--config', '{segmenter_config}', '--checkpoint', '{out}/iter_{seg_iters}.pth',
         '--data', '{val_data}', '--json', '{out}/test.json', '--cfg-options', 'log_level={seg_log_level}'],
        ['segment', 'predict', '--config', '{segmenter_config}', '--checkpoint', '{out}/iter_{seg_iters}.pth',
         '--data', '{val_data}', '--out', '{out}/predictions']]),
    dict(name='table', step='evaluate', title='ISLE (seed 001) on this data',
         labels={'CAM': '@cam', 'CAM + CRF': '@crf', 'AffinityNet walk': '@randomwalk',
                 'AffinityNet walk + CRF': '@randomwalk_crf', 'IRNet': '@irnet', 'IRNet + CRF': '@irnet_crf',
                 'CSRM': '@csrm', 'ISLE': '@isle'},
         segmenters=[dict(model='DeepLabV3+ R50', labels='ISLE', scores='@deeplabv3plus/test.json')]),
    dict(name='report', step='report', n=12,
         labels={'CAM': '@cam', 'CAM + CRF': '@crf', 'AffinityNet walk': '@randomwalk',
                 'AffinityNet walk + CRF': '@randomwalk_crf', 'IRNet': '@irnet', 'IRNet + CRF': '@irnet_crf',
                 'CSRM': '@csrm', 'ISLE': '@isle'}),
]
