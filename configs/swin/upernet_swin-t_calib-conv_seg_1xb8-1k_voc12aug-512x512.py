# UPerNet-Swin-T calibration: 1k iterations training only the classifier conv_seg from a given checkpoint
# (e.g. the vanilla 20k run of ./upernet_swin-t_1xb8-20k_voc12aug-512x512.py), before fine-tuning more layers.
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = ['../_base_/models/upernet_swin-t.py', '../_base_/calibrate_conv_seg_voc12aug.py']
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size))
