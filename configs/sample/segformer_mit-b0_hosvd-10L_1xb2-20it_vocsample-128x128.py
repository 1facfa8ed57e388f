# SegFormer-MiT-B0 on the sample data: fine-tune the last 10 traced layers (the last MiT block's attention
# output projection and Mix-FFN convs, then the head) with the hook's default compression; everything else
# frozen.
_base_ = './segformer_mit-b0_1xb2-20it_vocsample-128x128.py'
custom_hooks = [dict(type='ActivationCompressionHook', num_layers=10)]
