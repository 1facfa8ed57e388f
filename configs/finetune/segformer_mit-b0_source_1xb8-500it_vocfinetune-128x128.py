# Stage 1 for SegFormer-MiT-B0: the whole network trained from random weights on the *source* task (ARC 2017
# objects on real backgrounds, other classes than the target's), so that the ranks and gradients that
# benchmarks/grad_fidelity.py measures on the target task come from features that learned something.
#   python tools/train.py THIS_CONFIG --work-dir work_dirs/finetune/segformer/source
_base_ = './segformer_mit-b0_1xb8-100it_vocfinetune-128x128.py'
source_root = 'data/finetune_voc/source/VOCdevkit/VOC2012'
train_dataloader = dict(dataset=dict(data_root=source_root))
val_dataloader = dict(dataset=dict(data_root=source_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=500, val_interval=500)
# from scratch: mmseg's rates for fine-tuning MiT (6e-5, the head x10) learn too slowly in 500 iterations
optim_wrapper = dict(optimizer=dict(lr=0.001), paramwise_cfg=dict(custom_keys=dict(head=dict(lr_mult=1.))))
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=500))
randomness = dict(seed=0)
