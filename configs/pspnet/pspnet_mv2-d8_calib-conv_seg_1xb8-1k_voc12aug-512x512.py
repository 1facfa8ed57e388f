# PSPNet-MobileNetV2-d8 calibration: 1k iterations training only the classifier conv_seg from a given checkpoint
# (e.g. the vanilla 20k run of ./pspnet_mv2-d8_1xb8-20k_voc12aug-512x512.py), before fine-tuning more layers.
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = [
    '../_base_/models/pspnet_mv2-d8.py', 'mmseg::_base_/datasets/pascal_voc12_aug.py',
    '../_base_/default_runtime.py', '../_base_/schedules/calibrate_1k.py'
]
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size))
train_dataloader = dict(batch_size=8)
custom_hooks = [
    dict(type='ActivationCompressionHook', method='none', layers=['decode_head.conv_seg'],
         require_load_from=True)
]
