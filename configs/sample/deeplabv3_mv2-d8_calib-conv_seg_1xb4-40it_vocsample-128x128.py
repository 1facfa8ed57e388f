# Calibration on the sample data: train only the classifier conv_seg of DeepLabV3-MobileNetV2-d8 from a
# given checkpoint (in `make demo`, the head-training run before it). Step 2 of `make demo`:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=work_dirs/demo/head/iter_80.pth
_base_ = './deeplabv3_mv2-d8_1xb4-20it_vocsample-128x128.py'
train_cfg = dict(max_iters=40, val_interval=40)
default_hooks = dict(checkpoint=dict(interval=40))
custom_hooks = [
    dict(type='ActivationCompressionHook', method='none', layers=['decode_head.conv_seg'],
         require_load_from=True)
]
