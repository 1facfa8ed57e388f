# PSPNet-R18-d8: fine-tune the paper's 5L layer set (see ../_base_/layers/pspnet_r18-d8.py)
# with vanilla fine-tuning (nothing compressed: the baseline); everything else frozen. Starts from a calibrated
# checkpoint:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = ['./pspnet_r18-d8_1xb8-20k_voc12aug-512x512.py', '../_base_/layers/pspnet_r18-d8.py']
custom_hooks = [
    dict(type='ActivationCompressionHook', method='none', layers={{_base_.layers_5L}},
         require_load_from=True)
]
