# DeepLabV3-MobileNetV2-d8 (ImageNet backbone, `make weights`) on the learning benchmark's target task
# (`python tools/make_sample_voc.py --data finetune`), one CPU process, batch 8 at 128x128. The stage
# configs beside this one add the hook; benchmarks/finetune.py runs them all.
_base_ = [
    '../_base_/models/deeplabv3_mv2-d8.py', '../_base_/datasets/voc12aug_finetune.py',
    '../_base_/default_runtime.py', '../_base_/schedules/finetune_cpu.py'
]
crop_size = (128, 128)
model = dict(data_preprocessor=dict(size=crop_size))
# 100 CPU iterations instead of the paper's 20k: a larger rate than its 0.01, chosen on one pilot seed of
# vanilla fine-tuning (its gains over seeds: docs/finetune.md).
optim_wrapper = dict(optimizer=dict(lr=0.03))
