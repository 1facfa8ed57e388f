# FCN-MobileNetV2-d8: fine-tune the last 10 convs of the inference forward (traced: conv_seg, conv_cat, convs.1,
# convs.0, and conv.2/conv.1/conv.0 of backbone.layer7.0 and layer6.2; the paper has no FCN-MobileNetV2, same
# recipe as its ResNet-18 FCN) with the paper's HOSVD-compressed activations, explained variance 0.8, all four
# modes truncated (truncate_batch=True; the hook's default keeps the batch mode whole); everything else frozen.
# Starts from a calibrated checkpoint:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = './fcn_mv2-d8_1xb8-20k_voc12aug-512x512.py'
custom_hooks = [
    dict(type='ActivationCompressionHook', method='hosvd', explained_variance=0.8, num_layers=10,
         truncate_batch=True, require_load_from=True)
]
