# UPerNet-Swin-T at the paper's scale: 512x512 crops, batch 8, the layer set of
# ../_base_/layers/upernet_swin-t.py (the last Swin block's four linear layers and six head convs) fine-tuned
# with the hook's default compression. Random init: no transformer weights ship here (the model fragment's
# ImageNet Swin-T download is switched off), so its ranks say little about a trained net; memory and time
# are what this measures. `python benchmarks/bench_step.py --paper-scale` measures it (docs/bench_paper.md).
_base_ = [
    '../_base_/models/upernet_swin-t.py', '../_base_/datasets/voc12aug_finetune_512.py',
    '../_base_/default_runtime.py', '../_base_/schedules/finetune_cpu.py', '../_base_/layers/upernet_swin-t.py'
]
crop_size = (512, 512)
model = dict(backbone=dict(init_cfg=None), data_preprocessor=dict(size=crop_size))
custom_hooks = [dict(type='ActivationCompressionHook', layers={{_base_.layers_10L}})]
