# Seed 000 (Mousavi et al.): sequence the images of evolving subjects (SChISM), annotate one
# image per sequence, CAM pseudo labels, merge the sequence's mask with them (and, as a row of
# its own, the merged labels refined by the dense CRF), then U-Nets with VGG-16 and ResNet-50
# encoders trained on each row of the paper's Table 1.
#
#   plabel run configs/pipelines/evolving_seqmerge.py --data D --work W --to tasks
#   (annotate W/tasks/images/*: <id>.png class ids or LabelMe <id>.json, into one folder)
#   plabel run configs/pipelines/evolving_seqmerge.py --data D --work W \
#       --set annotations=ANN --set test_data=T
#
# Full-size models: ResNet-50 V1c CAM, 512x512 U-Nets; give local ImageNet weights with
# --set cam.pretrained=PATH and the segmenters' --pretrained in their `run` lines.
# `evolving_seqmerge_small.py` is this pipeline with the CPU configs (the demo's).

annotations = None  # folder with one annotation per task image; 'ground-truth' simulates them
test_data = None  # CSV index of held-out images with masks, where the segmenters are scored
cam_config = '{config_dir}/../sources/cam_resnet50_voc.py'
vgg_config = '{config_dir}/../segmenters/unet-vgg16_4xb4-20k_plabel-512x512.py'
resnet_config = '{config_dir}/../segmenters/unet-r50_4xb4-20k_plabel-512x512.py'
seg_iters = 20000
seg_resume = True  # continue an interrupted training from its last checkpoint
seg_log_level = 'INFO'  # mmengine's console and log file (losses are in vis_data/scalars.json too)
embedder = 'thumbnail'

# seed 000's Table 1 rows: (row, training images, their labels, manual labels mixed in)
_rows = [
    ('supervised', '@manual/index.csv', None, False),
    ('CAM', '@manual/others.csv', '@cam', False),
    ('CAM + manual', '@manual/others.csv', '@cam', True),
    ('ours', '@manual/others.csv', '@seqmerge', False),
    ('ours + manual', '@manual/others.csv', '@seqmerge', True),
]
_models = [('vgg16', 'U-Net VGG-16', '{vgg_config}'), ('r50', 'U-Net ResNet-50', '{resnet_config}')]
_stem = {'supervised': 'manual', 'CAM': 'cam', 'CAM + manual': 'cam_manual', 'ours': 'ours',
         'ours + manual': 'ours_manual'}


def _segmenter(key, config, row, data, labels, manual):
    train = ['segment', 'train', '--config', config, '--data', data, '--work', '{out}', '--iters', '{seg_iters}',
             '--cfg-options', 'resume={seg_resume}', 'log_level={seg_log_level}']
    train += ['--labels', labels] if labels else []
    train += ['--manual', '@manual/index.csv'] if manual else []
    test = ['segment', 'test', '--config', config, '--checkpoint', '{out}/iter_{seg_iters}.pth',
            '--data', '{test_data}', '--json', '{out}/test.json', '--cfg-options', 'log_level={seg_log_level}']
    predict = ['segment', 'predict', '--config', config, '--checkpoint', '{out}/iter_{seg_iters}.pth',
               '--data', '{test_data}', '--out', '{out}/predictions']
    return dict(name=f'seg_{key}_{_stem[row]}', step='command', run=[train, test, predict])


stages = [
    dict(name='sequences', step='command',
         run=['sequence', 'build', '--data', '{data}', '--embedder', '{embedder}', '--out', '{out}/seq.json']),
    dict(name='tasks', step='command', run=['sequence', 'tasks', '@sequences/seq.json', '--data', '{data}',
                                            '--out', '{out}']),
    dict(name='manual', step='command',
         run=['sequence', 'annotated', '@tasks', '--annotations', '{annotations}', '--data', '{data}',
              '--out', '{out}']),
    # seed 000 Sec. 3.2: CAM labels from a foreground and a background threshold, the band
    # between ignored, refined by the dense CRF: IRN's IR labels (the merge reads 255 as "no
    # CAM class", so Equation 1 is unchanged)
    dict(name='cam', step='source', type='cam', config='{cam_config}', mode='ir_labels'),
    dict(name='seqmerge', step='source', type='seqmerge', sequences='@sequences/seq.json',
         annotations='@manual/masks', cam='@cam'),
    # the carried masks refined by the dense CRF (label recipe, kernels scaled to the image):
    # a row of its own in the table and the report, next to the merge it refines
    dict(name='seqmerge_crf', step='refine', input='@seqmerge', type='crf', recipe='label'),
] + [
    _segmenter(key, config, row, data, labels, manual)
    for key, _, config in _models for row, data, labels, manual in _rows
] + [
    dict(name='table', step='evaluate', title="seed 000's Table 1 on this data",
         labels={'CAM': '@cam', 'sequence merge': '@seqmerge', 'sequence merge + CRF': '@seqmerge_crf'},
         segmenters=[dict(model=model, labels=row, scores=f'@seg_{key}_{_stem[row]}/test.json')
                     for key, model, _ in _models for row, _, _, _ in _rows]),
    dict(name='report', step='report', n=12,
         labels={'CAM': '@cam', 'sequence merge': '@seqmerge', 'sequence merge + CRF': '@seqmerge_crf'}),
    dict(name='test_report', step='report', n=12, data='{test_data}',
         labels={f'{model}, {row}': f'@seg_{key}_{_stem[row]}/predictions'
                 for key, model, _ in _models for row in ('supervised', 'ours + manual')}),
]
