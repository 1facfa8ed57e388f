# UPerNet-R18 on the sample data: fine-tune the same 10 layers as the VOC 10L configs
# without compression (the vanilla baseline); everything else frozen.
_base_ = './upernet_r18_1xb2-20it_vocsample-128x128.py'
custom_hooks = [dict(type='ActivationCompressionHook', method='none', num_layers=10)]
