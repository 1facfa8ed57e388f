# FCN-R18-d8 on the sample data: fine-tune the same 10 layers as the VOC 10L configs
# without compression (the vanilla baseline); everything else frozen.
_base_ = ['./fcn_r18-d8_1xb2-20it_vocsample-128x128.py', '../_base_/layers/fcn_r18-d8.py']
custom_hooks = [dict(type='ActivationCompressionHook', method='none', layers={{_base_.layers_10L}})]
