# plabel datasets at mmseg's 512x512 recipe (the pipelines of mmseg's pascal_voc12_aug).
# `plabel segment train|test` and tools/train.py|test.py fill `data`, `labels`, `manual`
# (--data, --labels, --manual) and set the class count from the data.
custom_imports = dict(
    imports=['plabel_mmseg.dataset', 'plabel_mmseg.metric', 'plabel_mmseg.vgg_encoder',
             'plabel_mmseg.resnet_encoder', 'plabel_mmseg.unet_head'],
    allow_failed_imports=False)
dataset_type = 'PlabelSegDataset'
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Pad', size=crop_size),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    # annotations after Resize: predictions are scored at the original size
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data=None, labels=None, manual=None, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data=None, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='FwIoUMetric')
test_evaluator = val_evaluator
