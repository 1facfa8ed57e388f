# Calibration on the sample data: train only the classifier conv_seg of DeepLabV3-MobileNetV2-d8, whose
# backbone holds ImageNet weights (`make weights`), before fine-tuning more layers. Step 1 of `make demo`.
_base_ = './deeplabv3_mv2-d8_1xb4-20it_vocsample-128x128.py'
train_cfg = dict(max_iters=40, val_interval=40)
default_hooks = dict(checkpoint=dict(interval=40))
custom_hooks = [dict(type='ActivationCompressionHook', method='none', layers=['decode_head.conv_seg'])]
