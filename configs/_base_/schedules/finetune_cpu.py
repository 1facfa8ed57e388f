# The learning benchmark's CPU schedule: the paper's SGD and gradient clipping (./finetune_20k.py) with a
# 10-iteration linear warm-up and a cosine decay to the end, so a run of --cfg-options
# train_cfg.max_iters=N ends at a small rate whatever N is (the scheduler's end is the loop's end).
_base_ = './finetune_20k.py'
# 100 CPU iterations instead of the paper's 20k: a larger rate than its 0.01, chosen on one pilot seed of
# vanilla fine-tuning (its gains over seeds: docs/finetune.md).
optim_wrapper = dict(optimizer=dict(lr=0.03))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', eta_min=0., by_epoch=False, begin=10),
]
train_cfg = dict(max_iters=100, val_interval=100)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=100))
