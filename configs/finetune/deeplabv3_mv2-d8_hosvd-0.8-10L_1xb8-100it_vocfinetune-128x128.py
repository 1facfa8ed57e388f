# Stage 3 with HOSVD: the same fine-tuning, activations compressed at explained variance 0.8.
#   python tools/train.py THIS_CONFIG --cfg-options load_from=<stage 2 checkpoint>
_base_ = './deeplabv3_mv2-d8_none-10L_1xb8-100it_vocfinetune-128x128.py'
custom_hooks = [
    dict(type='ActivationCompressionHook', method='hosvd', explained_variance=0.8,
         layers={{_base_.layers_10L}}, require_load_from=True)
]
