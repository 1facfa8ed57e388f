# DeepLabV3-MobileNetV2-d8 (ImageNet backbone, `make weights`) on the learning benchmark's target task
# (`python tools/make_sample_voc.py --data finetune`), one CPU process, batch 8 at 128x128. The stage
# configs beside this one add the hook; benchmarks/finetune.py runs them all.
_base_ = [
    '../_base_/models/deeplabv3_mv2-d8.py', '../_base_/datasets/voc12aug_finetune.py',
    '../_base_/default_runtime.py', '../_base_/schedules/finetune_cpu.py'
]
crop_size = (128, 128)
model = dict(data_preprocessor=dict(size=crop_size))
