# Train the decode head of DeepLabV3-MobileNetV2-d8 on the sample data, ImageNet backbone frozen: the
# sample has no VOC-trained checkpoint to start from, so this stands in for the paper's first (full)
# training. Step 1 of `make demo`; its checkpoint is what calibration starts from.
_base_ = './deeplabv3_mv2-d8_1xb4-20it_vocsample-128x128.py'
train_cfg = dict(max_iters=80, val_interval=80)
optim_wrapper = dict(optimizer=dict(lr=0.05))  # a head trained from scratch takes a larger rate
default_hooks = dict(checkpoint=dict(interval=80))
custom_hooks = [
    dict(type='ActivationCompressionHook', method='none',
         layers=['decode_head.image_pool.1.conv', 'decode_head.aspp_modules.0.conv',
                 'decode_head.aspp_modules.1.conv', 'decode_head.aspp_modules.2.conv',
                 'decode_head.aspp_modules.3.conv', 'decode_head.bottleneck.conv', 'decode_head.conv_seg'])
]
