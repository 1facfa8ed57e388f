# The learning benchmark's target task (`python tools/make_sample_voc.py --data finetune`) at the paper's
# scale: mmseg's Pascal VOC 512x512 training pipeline (resize to 2048x512 * [0.5, 2], 512x512 crop) on its
# 160x120 images, batch 8. For measuring memory and step time at the size the paper trains (real pixels,
# real backbone weights); the learning benchmark itself runs at 128x128.
_base_ = './voc12aug_finetune.py'
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Pad', size=crop_size),
    dict(type='PackSegInputs')
]
train_dataloader = dict(batch_size=8, dataset=dict(pipeline=train_pipeline))
