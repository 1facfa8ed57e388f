# Fine-tune the paper's 10 layers of DeepLabV3-MobileNetV2-d8 on the sample data with HOSVD-compressed
# activations (explained variance 0.8), from a trained checkpoint (the tests and benchmarks/bench_step.py
# use it; the demo's fine-tuning is in configs/finetune/):
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = ['./deeplabv3_mv2-d8_1xb4-20it_vocsample-128x128.py', '../_base_/layers/deeplabv3_mv2-d8.py']
train_cfg = dict(max_iters=40, val_interval=40)
default_hooks = dict(checkpoint=dict(interval=40))
custom_hooks = [
    dict(type='ActivationCompressionHook', method='hosvd', explained_variance=0.8,
         layers={{_base_.layers_10L}}, require_load_from=True)
]
