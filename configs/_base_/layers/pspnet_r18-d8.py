# The paper's fine-tuned layer sets for PSPNet-R18-d8 (Nguyen et al., NeurIPS 2024, official configs),
# as conv module paths of mmseg's model, in forward order.
# 5L: the whole decode head: the 4 pyramid-pooling convs, the bottleneck, the classifier conv_seg
#     (6 convs; the paper counts 5 without conv_seg).
# 10L: 5L plus every conv of backbone.layer4 (conv1/conv2 of both blocks and layer4.0's downsample):
#     11 convs; the paper counts 10 without conv_seg.
layers_5L = [
    'decode_head.psp_modules.0.1.conv', 'decode_head.psp_modules.1.1.conv',
    'decode_head.psp_modules.2.1.conv', 'decode_head.psp_modules.3.1.conv',
    'decode_head.bottleneck.conv', 'decode_head.conv_seg'
]
layers_10L = [
    'backbone.layer4.0.conv1', 'backbone.layer4.0.conv2', 'backbone.layer4.0.downsample.0',
    'backbone.layer4.1.conv1', 'backbone.layer4.1.conv2'
] + layers_5L
