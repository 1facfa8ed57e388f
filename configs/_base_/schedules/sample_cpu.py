# A short CPU schedule for the bundled sample data: 20 iterations, one validation pass at the end.
# Linear warm-up then a constant rate, so that --cfg-options train_cfg.max_iters=N needs nothing else.
_base_ = './finetune_20k.py'
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5)]
train_cfg = dict(max_iters=20, val_interval=20)
default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(interval=20))
