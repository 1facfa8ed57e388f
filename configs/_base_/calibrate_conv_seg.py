# Calibration's hook (the paper's step before fine-tuning): only the classifier conv_seg trains, uncompressed,
# everything else frozen, from the checkpoint given by load_from. Every *_calib-conv_seg_* config inherits it.
custom_hooks = [
    dict(type='ActivationCompressionHook', method='none', layers=['decode_head.conv_seg'],
         require_load_from=True)
]
