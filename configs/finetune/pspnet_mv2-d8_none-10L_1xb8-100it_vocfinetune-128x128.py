# Stage 3 for PSPNet, vanilla: fine-tune the paper's 10 layers (11 convs with conv_seg) on the target task
# without compression, from the calibrated checkpoint; benchmarks/finetune.py overrides the hook's keys for
# the compressed rows.
#   python tools/train.py THIS_CONFIG --cfg-options load_from=<stage 2 checkpoint>
_base_ = ['./pspnet_mv2-d8_1xb8-100it_vocfinetune-128x128.py', '../_base_/layers/pspnet_mv2-d8.py']
custom_hooks = [
    dict(type='ActivationCompressionHook', method='none', layers={{_base_.layers_10L}},
         require_load_from=True)
]
