# DeepLabV3-MobileNetV2-d8 (ImageNet backbone, `make weights`) at the paper's scale: 512x512 crops, batch 8,
# the paper's 10 layers fine-tuned with HOSVD at explained variance 0.8 (the hook's defaults otherwise).
# `python benchmarks/bench_step.py --paper-scale` measures memory and step time with it (docs/bench_paper.md);
# training with it works too, from a calibrated checkpoint:
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = [
    '../_base_/models/deeplabv3_mv2-d8.py', '../_base_/datasets/voc12aug_finetune_512.py',
    '../_base_/default_runtime.py', '../_base_/schedules/finetune_cpu.py', '../_base_/layers/deeplabv3_mv2-d8.py'
]
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size))
custom_hooks = [
    dict(type='ActivationCompressionHook', method='hosvd', explained_variance=0.8,
         layers={{_base_.layers_10L}}, require_load_from=True)
]
