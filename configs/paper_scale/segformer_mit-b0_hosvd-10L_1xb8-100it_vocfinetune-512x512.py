# SegFormer-MiT-B0 at the paper's scale: 512x512 crops, batch 8, the last 10 traced layers (the last MiT
# block's attention output projection and Mix-FFN convs, then the head) fine-tuned with the hook's default
# compression. Random init: no transformer weights ship here (the model fragment's ImageNet MiT-B0 download
# is switched off), so its ranks say little about a trained net; memory and time are what this measures.
# `python benchmarks/bench_step.py --paper-scale` measures it (docs/bench_paper.md).
_base_ = [
    '../_base_/models/segformer_mit-b0.py', '../_base_/datasets/voc12aug_finetune_512.py',
    '../_base_/default_runtime.py', '../_base_/schedules/finetune_cpu.py'
]
crop_size = (512, 512)
model = dict(backbone=dict(init_cfg=None), data_preprocessor=dict(size=crop_size))
custom_hooks = [dict(type='ActivationCompressionHook', num_layers=10)]
