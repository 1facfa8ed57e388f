# UPerNet-R18 on the sample data: fine-tune the same 10 layers as the VOC 10L configs
# with HOSVD-compressed activations (explained variance 0.8); everything else frozen.
_base_ = './upernet_r18_1xb2-20it_vocsample-128x128.py'
custom_hooks = [dict(type='ActivationCompressionHook', method='hosvd', explained_variance=0.8, num_layers=10)]
