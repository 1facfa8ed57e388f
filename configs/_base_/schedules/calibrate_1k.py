# Calibration's schedule: 1k iterations of ./finetune_20k.py's SGD (100 warm-up, then cosine), one validation
# and checkpoint at the end. What trains (the classifier alone) is the hook of ../calibrate_conv_seg.py.
_base_ = './finetune_20k.py'
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', T_max=900, eta_min=1e-5, by_epoch=False, begin=100, end=1000),
]
train_cfg = dict(max_iters=1000, val_interval=1000)
default_hooks = dict(checkpoint=dict(interval=1000))
