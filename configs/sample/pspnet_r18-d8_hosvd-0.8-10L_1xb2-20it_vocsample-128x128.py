# PSPNet-R18-d8 on the sample data: fine-tune the same 10 layers as the VOC 10L configs
# with HOSVD-compressed activations (explained variance 0.8); everything else frozen.
_base_ = ['./pspnet_r18-d8_1xb2-20it_vocsample-128x128.py', '../_base_/layers/pspnet_r18-d8.py']
custom_hooks = [dict(type='ActivationCompressionHook', method='hosvd', explained_variance=0.8,
                     layers={{_base_.layers_10L}})]
