# SegFormer-MiT-B0: fine-tune the last 10 layers of the inference forward (traced: the last MiT block's
# attention out_proj and its Mix-FFN's three convs, then the head's six convs) with vanilla fine-tuning
# (nothing compressed: the baseline); everything else frozen. Starts from a calibrated checkpoint:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = './segformer_mit-b0_1xb8-20k_voc12aug-512x512.py'
custom_hooks = [dict(type='ActivationCompressionHook', method='none', num_layers=10, require_load_from=True)]
