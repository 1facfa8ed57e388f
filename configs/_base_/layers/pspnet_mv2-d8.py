# The paper's fine-tuned layer sets for PSPNet-MobileNetV2 (Nguyen et al., NeurIPS 2024, official
# configs), as conv module paths of mmseg's model, in forward order.
# 5L: the whole decode head: 4 pyramid-pooling convs, bottleneck, conv_seg (6 convs; the paper counts 5).
# 10L: 5L plus layer7.0 (expand, depthwise, project) and layer6.2's depthwise and project convs:
#      11 convs (the paper counts 10 without conv_seg).
layers_5L = [
    'decode_head.psp_modules.0.1.conv', 'decode_head.psp_modules.1.1.conv',
    'decode_head.psp_modules.2.1.conv', 'decode_head.psp_modules.3.1.conv',
    'decode_head.bottleneck.conv', 'decode_head.conv_seg'
]
layers_10L = [
    'backbone.layer6.2.conv.1.conv', 'backbone.layer6.2.conv.2.conv', 'backbone.layer7.0.conv.0.conv',
    'backbone.layer7.0.conv.1.conv', 'backbone.layer7.0.conv.2.conv'
] + layers_5L
