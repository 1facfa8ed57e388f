# PSPNet with the ImageNet MobileNetV2-d8 backbone of ./mobilenet_v2-d8.py (as mmseg's
# mobilenet-v2-d8_pspnet configs), 21 VOC classes, plain BN.
_base_ = ['mmseg::_base_/models/pspnet_r50-d8.py', './mobilenet_v2-d8.py']
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    backbone={{_base_.mobilenet_v2_d8}},
    decode_head=dict(in_channels=320, num_classes=21, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=96, num_classes=21, norm_cfg=norm_cfg))
