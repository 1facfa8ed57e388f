# Stage 3, vanilla: fine-tune the paper's last 10 layers on the target task without compression, from
# the calibrated checkpoint (the baseline the compressed runs are measured against).
#   python tools/train.py THIS_CONFIG --cfg-options load_from=<stage 2 checkpoint>
_base_ = ['./deeplabv3_mv2-d8_1xb8-100it_vocfinetune-128x128.py', '../_base_/layers/deeplabv3_mv2-d8.py']
custom_hooks = [
    dict(type='ActivationCompressionHook', method='none', layers={{_base_.layers_10L}},
         require_load_from=True)
]
