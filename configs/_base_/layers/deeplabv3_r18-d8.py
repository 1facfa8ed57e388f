# The paper's fine-tuned layer sets for DeepLabV3-R18-d8 (Nguyen et al., NeurIPS 2024, official configs),
# as conv module paths of mmseg's model, in forward order.
# 5L: the 5 decode-head ConvModules it fine-tunes (4 ASPP branches, bottleneck) + the classifier conv_seg
#     (6 convs; the paper does not count conv_seg here).
# 10L: 5L plus conv1/conv2 of backbone.layer4.0 and layer4.1 (10 convs with conv_seg).
# The ASPP image-pool branch (a 1x1 conv on a 1x1 map) and layer4.0's downsample are not in either set.
layers_5L = [
    'decode_head.aspp_modules.0.conv', 'decode_head.aspp_modules.1.conv',
    'decode_head.aspp_modules.2.conv', 'decode_head.aspp_modules.3.conv',
    'decode_head.bottleneck.conv', 'decode_head.conv_seg'
]
layers_10L = [
    'backbone.layer4.0.conv1', 'backbone.layer4.0.conv2', 'backbone.layer4.1.conv1',
    'backbone.layer4.1.conv2'
] + layers_5L
