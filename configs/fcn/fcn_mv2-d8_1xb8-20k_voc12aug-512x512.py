# FCN-MobileNetV2-d8 on Pascal VOC 2012 aug, the paper's protocol: 512x512 crops, batch 8 on one GPU,
# 20k iterations, cosine LR with warm-up, grad-clip 1, from ImageNet weights (`make weights`).
# Vanilla: every layer trains, nothing is compressed.
_base_ = [
    '../_base_/models/fcn_mv2-d8.py', 'mmseg::_base_/datasets/pascal_voc12_aug.py',
    '../_base_/default_runtime.py', '../_base_/schedules/finetune_20k.py'
]
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size))
train_dataloader = dict(batch_size=8)
