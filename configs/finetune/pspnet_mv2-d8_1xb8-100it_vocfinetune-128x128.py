# PSPNet-MobileNetV2-d8 (ImageNet backbone, `make weights`) on the learning benchmark's target task, the
# second model of benchmarks/finetune.py (its "pspnet" section): the same data, crop, batch and schedule as
# ./deeplabv3_mv2-d8_1xb8-100it_vocfinetune-128x128.py. The stage configs beside this one add the hook.
_base_ = [
    '../_base_/models/pspnet_mv2-d8.py', '../_base_/datasets/voc12aug_finetune.py',
    '../_base_/default_runtime.py', '../_base_/schedules/finetune_cpu.py'
]
crop_size = (128, 128)
model = dict(data_preprocessor=dict(size=crop_size))
