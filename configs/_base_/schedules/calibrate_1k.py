# Calibration: 1k iterations that train only the classifier from a given checkpoint, before fine-tuning.
_base_ = './finetune_20k.py'
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', T_max=900, eta_min=1e-5, by_epoch=False, begin=100, end=1000),
]
train_cfg = dict(max_iters=1000, val_interval=1000)
default_hooks = dict(checkpoint=dict(interval=1000))
