# A short CPU schedule for the bundled sample data: 20 iterations, one validation pass at the end.
_base_ = './finetune_20k.py'
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5),
    dict(type='CosineAnnealingLR', T_max=15, eta_min=1e-4, by_epoch=False, begin=5, end=20),
]
train_cfg = dict(max_iters=20, val_interval=20)
default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(interval=20))
