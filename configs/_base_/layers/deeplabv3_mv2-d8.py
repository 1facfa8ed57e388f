# The paper's fine-tuned layer sets for DeepLabV3-MobileNetV2 (Nguyen et al., NeurIPS 2024, official
# configs), as conv module paths of mmseg's model, in forward order.
# 5L: the 4 ASPP branches, the bottleneck and the classifier conv_seg (6 convs; conv_seg not counted).
# 10L: 5L plus the last InvertedResidual (layer7.0: expand, depthwise, project convs) and the project
#      conv of layer6.2: 10 convs.
layers_5L = [
    'decode_head.aspp_modules.0.conv', 'decode_head.aspp_modules.1.conv',
    'decode_head.aspp_modules.2.conv', 'decode_head.aspp_modules.3.conv',
    'decode_head.bottleneck.conv', 'decode_head.conv_seg'
]
layers_10L = [
    'backbone.layer6.2.conv.2.conv', 'backbone.layer7.0.conv.0.conv', 'backbone.layer7.0.conv.1.conv',
    'backbone.layer7.0.conv.2.conv'
] + layers_5L
