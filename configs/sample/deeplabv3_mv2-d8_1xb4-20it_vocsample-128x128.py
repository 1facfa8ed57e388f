# DeepLabV3-MobileNetV2-d8 on the bundled sample data, one CPU process, from ImageNet weights
# (`make weights`). Vanilla: every layer trains, nothing is compressed.
_base_ = [
    '../_base_/models/deeplabv3_mv2-d8.py', '../_base_/datasets/voc12aug_sample.py',
    '../_base_/default_runtime.py', '../_base_/schedules/sample_cpu.py'
]
crop_size = (128, 128)
model = dict(data_preprocessor=dict(size=crop_size))
train_dataloader = dict(batch_size=4)
