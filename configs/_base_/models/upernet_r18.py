# UPerNet with a ResNet-18 backbone (as mmseg's upernet_r18 configs), 21 VOC classes, plain BN and
# frozen backbone BN statistics (norm_eval=True). The paper has no UPerNet; it follows the same recipe.
_base_ = 'mmseg::_base_/models/upernet_r50.py'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained='open-mmlab://resnet18_v1c',
    backbone=dict(depth=18, norm_cfg=norm_cfg, norm_eval=True),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=21, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, num_classes=21, norm_cfg=norm_cfg))
