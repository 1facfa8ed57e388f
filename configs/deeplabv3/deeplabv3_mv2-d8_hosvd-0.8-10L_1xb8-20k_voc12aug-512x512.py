# DeepLabV3-MobileNetV2-d8: fine-tune the paper's 10L layer set (see ../_base_/layers/deeplabv3_mv2-d8.py) with
# the paper's HOSVD-compressed activations, explained variance 0.8, all four modes truncated
# (truncate_batch=True; the hook's default keeps the batch mode whole); everything else frozen. Starts from a
# calibrated checkpoint:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = ['./deeplabv3_mv2-d8_1xb8-20k_voc12aug-512x512.py', '../_base_/layers/deeplabv3_mv2-d8.py']
custom_hooks = [
    dict(type='ActivationCompressionHook', method='hosvd', explained_variance=0.8, layers={{_base_.layers_10L}},
         truncate_batch=True, require_load_from=True)
]
