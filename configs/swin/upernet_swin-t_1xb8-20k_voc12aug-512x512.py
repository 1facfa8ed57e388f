# UPerNet-Swin-T on Pascal VOC 2012 aug, the paper's protocol: 512x512 crops, batch 8 on one GPU, 20k iterations,
# warm-up then cosine, grad-clip 1, with mmseg's AdamW for transformer backbones, from ImageNet weights.
# Vanilla: every layer trains, nothing is compressed.
_base_ = [
    '../_base_/models/upernet_swin-t.py', 'mmseg::_base_/datasets/pascal_voc12_aug.py',
    '../_base_/default_runtime.py', '../_base_/schedules/finetune_20k_adamw.py'
]
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size))
train_dataloader = dict(batch_size=8)
