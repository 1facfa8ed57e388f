# SegFormer-MiT-B0 on the learning benchmark's target task (`python tools/make_sample_voc.py --data finetune`),
# one CPU process, batch 8 at 128x128, from random weights: no MiT weights ship here (the ImageNet ones are a
# download), so the source-task config beside this one trains the whole network first. mmseg's AdamW recipe
# (../_base_/schedules/finetune_20k_adamw.py) with the CPU schedule's warm-up and cosine to the loop's end.
_base_ = [
    '../_base_/models/segformer_mit-b0.py', '../_base_/datasets/voc12aug_finetune.py',
    '../_base_/default_runtime.py', '../_base_/schedules/finetune_20k_adamw.py'
]
crop_size = (128, 128)
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', eta_min=0., by_epoch=False, begin=10),
]
train_cfg = dict(max_iters=100, val_interval=100)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=100))
