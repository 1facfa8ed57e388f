# The learning benchmark's target task (`python tools/make_sample_voc.py --data finetune`): scenes of the
# real VOC photo's objects on real backgrounds, 400 train / 300 val, VOC labels. Plain VOC layout
# (train.txt + SegmentationClass), a 128x128 crop, no worker processes for one CPU process. The source
# task's configs point data_root at ../source instead.
_base_ = 'mmseg::_base_/datasets/pascal_voc12.py'
data_root = 'data/finetune_voc/target/VOCdevkit/VOC2012'
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(160, 120), ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Pad', size=crop_size),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=10,  # every val image is 160x120: they batch without padding
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
