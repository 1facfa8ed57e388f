# UPerNet-Swin-T's fine-tuned layer set. Its last 10 layers in inference order (what num_layers=10 picks) are
# all head convs, so no transformer layer would train; this set takes the last Swin block's four linear
# layers (attention qkv and projection, the FFN's two) and the six head convs that the last stage's
# features reach conv_seg through.
layers_10L = [
    'backbone.stages.3.blocks.1.attn.w_msa.qkv', 'backbone.stages.3.blocks.1.attn.w_msa.proj',
    'backbone.stages.3.blocks.1.ffn.layers.0.0', 'backbone.stages.3.blocks.1.ffn.layers.1',
    'decode_head.bottleneck.conv', 'decode_head.fpn_convs.0.conv', 'decode_head.fpn_convs.1.conv',
    'decode_head.fpn_convs.2.conv', 'decode_head.fpn_bottleneck.conv', 'decode_head.conv_seg'
]
