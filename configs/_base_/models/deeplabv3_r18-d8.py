# DeepLabV3 with a ResNet-18-d8 backbone, the channel sizes of mmseg's deeplabv3_r18-d8 configs,
# Pascal VOC's 21 classes, plain BN (one process; SyncBN is for multi-GPU clusters) and frozen BN
# statistics in the backbone (norm_eval=True), as in the paper's fine-tuning protocol.
_base_ = 'mmseg::_base_/models/deeplabv3_r50-d8.py'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained='open-mmlab://resnet18_v1c',
    backbone=dict(depth=18, norm_cfg=norm_cfg, norm_eval=True),
    decode_head=dict(in_channels=512, channels=128, num_classes=21, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=64, num_classes=21, norm_cfg=norm_cfg))
