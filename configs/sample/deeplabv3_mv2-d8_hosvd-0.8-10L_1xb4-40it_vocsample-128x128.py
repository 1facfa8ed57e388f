# Fine-tune the paper's 10 layers of DeepLabV3-MobileNetV2-d8 on the sample data with HOSVD-compressed
# activations (explained variance 0.8), from the calibrated checkpoint. Step 3 of `make demo`:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=work_dirs/demo/calibrate/iter_40.pth
_base_ = ['./deeplabv3_mv2-d8_1xb4-20it_vocsample-128x128.py', '../_base_/layers/deeplabv3_mv2-d8.py']
train_cfg = dict(max_iters=40, val_interval=40)
default_hooks = dict(checkpoint=dict(interval=40))
custom_hooks = [
    dict(type='ActivationCompressionHook', method='hosvd', explained_variance=0.8,
         layers={{_base_.layers_10L}}, require_load_from=True)
]
