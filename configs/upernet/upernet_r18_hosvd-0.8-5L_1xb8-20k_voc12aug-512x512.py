# UPerNet-R18: fine-tune the last 5 convs of the inference forward (traced; the paper has no UPerNet, same
# recipe) with the paper's HOSVD-compressed activations, explained variance 0.8, all four modes truncated
# (truncate_batch=True; the hook's default keeps the batch mode whole); everything else frozen. Starts from a
# calibrated checkpoint:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = './upernet_r18_1xb8-20k_voc12aug-512x512.py'
custom_hooks = [
    dict(type='ActivationCompressionHook', method='hosvd', explained_variance=0.8, num_layers=5,
         truncate_batch=True, require_load_from=True)
]
