# Calibration on Pascal VOC 2012 aug, everything but the model: mmseg's VOC aug data (512x512 crops), batch 8
# on one GPU, 1k iterations (./schedules/calibrate_1k.py) training only conv_seg (./calibrate_conv_seg.py).
# The configs/*/*_calib-conv_seg_1xb8-1k_voc12aug-512x512.py configs add their model and its crop size.
_base_ = [
    'mmseg::_base_/datasets/pascal_voc12_aug.py', './default_runtime.py', './schedules/calibrate_1k.py',
    './calibrate_conv_seg.py'
]
train_dataloader = dict(batch_size=8)
