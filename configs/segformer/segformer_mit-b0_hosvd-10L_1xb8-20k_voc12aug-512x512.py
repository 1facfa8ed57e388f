# SegFormer-MiT-B0: fine-tune the same last 10 layers as ./segformer_mit-b0_none-10L_1xb8-20k_voc12aug-512x512.py
# with the hook's default compression (HOSVD, explained variance 0.9, batch mode whole, region norms'
# inputs in 2 bits; see README); everything else frozen. Starts from a calibrated checkpoint:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = './segformer_mit-b0_1xb8-20k_voc12aug-512x512.py'
custom_hooks = [dict(type='ActivationCompressionHook', num_layers=10, require_load_from=True)]
