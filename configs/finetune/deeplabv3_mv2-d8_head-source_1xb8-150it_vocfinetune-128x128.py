# Stage 1, the start (stands in for the paper's Cityscapes-trained network): train the decode head on the
# *source* task (ARC 2017 objects, other classes than the target's) on the frozen ImageNet backbone.
_base_ = './deeplabv3_mv2-d8_1xb8-100it_vocfinetune-128x128.py'
source_root = 'data/finetune_voc/source/VOCdevkit/VOC2012'
train_dataloader = dict(dataset=dict(data_root=source_root))
val_dataloader = dict(dataset=dict(data_root=source_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=150, val_interval=150)
optim_wrapper = dict(optimizer=dict(lr=0.05))  # a head trained from scratch takes a larger rate
default_hooks = dict(checkpoint=dict(interval=150))
custom_hooks = [
    dict(type='ActivationCompressionHook', method='none',
         layers=['decode_head.image_pool.1.conv', 'decode_head.aspp_modules.0.conv',
                 'decode_head.aspp_modules.1.conv', 'decode_head.aspp_modules.2.conv',
                 'decode_head.aspp_modules.3.conv', 'decode_head.bottleneck.conv', 'decode_head.conv_seg'])
]
