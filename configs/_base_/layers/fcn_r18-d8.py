# The paper's fine-tuned layer sets for FCN-R18-d8 (Nguyen et al., NeurIPS 2024, official configs),
# as conv module paths of mmseg's model, in forward order.
# 5L: conv1/conv2 of backbone.layer4.1, the head's two convs and conv_cat, and the classifier conv_seg
#     (6 convs; the paper counts 5 without conv_seg).
# 10L: 5L plus layer4.0 (conv1, conv2, downsample) and conv1/conv2 of layer3.1: 11 convs; the paper
#     counts 10 without conv_seg.
layers_5L = [
    'backbone.layer4.1.conv1', 'backbone.layer4.1.conv2', 'decode_head.convs.0.conv',
    'decode_head.convs.1.conv', 'decode_head.conv_cat.conv', 'decode_head.conv_seg'
]
layers_10L = [
    'backbone.layer3.1.conv1', 'backbone.layer3.1.conv2', 'backbone.layer4.0.conv1',
    'backbone.layer4.0.conv2', 'backbone.layer4.0.downsample.0'
] + layers_5L
