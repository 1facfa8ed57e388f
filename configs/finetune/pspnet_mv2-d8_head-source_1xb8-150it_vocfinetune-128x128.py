# Stage 1 for PSPNet, the start: train the decode head on the *source* task on the frozen ImageNet backbone
# (as ./deeplabv3_mv2-d8_head-source_1xb8-150it_vocfinetune-128x128.py does for DeepLabV3).
_base_ = ['./pspnet_mv2-d8_1xb8-100it_vocfinetune-128x128.py', '../_base_/layers/pspnet_mv2-d8.py']
source_root = 'data/finetune_voc/source/VOCdevkit/VOC2012'
train_dataloader = dict(dataset=dict(data_root=source_root))
val_dataloader = dict(dataset=dict(data_root=source_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=150, val_interval=150)
optim_wrapper = dict(optimizer=dict(lr=0.05))  # a head trained from scratch takes a larger rate
default_hooks = dict(checkpoint=dict(interval=150))
custom_hooks = [dict(type='ActivationCompressionHook', method='none', layers={{_base_.layers_5L}})]
