# UPerNet-Swin-T: fine-tune the layer set of ../_base_/layers/upernet_swin-t.py (the last Swin block's four
# linear layers and six head convs) with the hook's default compression (HOSVD, explained variance 0.9,
# batch mode whole, region norms' inputs in 2 bits; see README); everything else frozen. Starts from a
# calibrated checkpoint:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = ['./upernet_swin-t_1xb8-20k_voc12aug-512x512.py', '../_base_/layers/upernet_swin-t.py']
custom_hooks = [dict(type='ActivationCompressionHook', layers={{_base_.layers_10L}}, require_load_from=True)]
