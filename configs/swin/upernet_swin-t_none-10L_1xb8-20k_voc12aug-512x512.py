# UPerNet-Swin-T: fine-tune the layer set of ../_base_/layers/upernet_swin-t.py (the last Swin block's four
# linear layers and six head convs) with vanilla fine-tuning (nothing compressed: the baseline); everything
# else frozen. Starts from a calibrated checkpoint:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = ['./upernet_swin-t_1xb8-20k_voc12aug-512x512.py', '../_base_/layers/upernet_swin-t.py']
custom_hooks = [
    dict(type='ActivationCompressionHook', method='none', layers={{_base_.layers_10L}}, require_load_from=True)
]
