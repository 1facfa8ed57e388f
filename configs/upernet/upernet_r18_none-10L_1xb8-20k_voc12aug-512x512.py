# UPerNet-R18: fine-tune the last 10 convs of the inference forward (traced; the paper has no UPerNet, same recipe)
# with vanilla fine-tuning (nothing compressed: the baseline); everything else frozen. Starts from a calibrated
# checkpoint:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = './upernet_r18_1xb8-20k_voc12aug-512x512.py'
custom_hooks = [
    dict(type='ActivationCompressionHook', method='none', num_layers=10,
         require_load_from=True)
]
