# FCN with an ImageNet MobileNetV2-d8 backbone, as mmseg's mobilenet-v2-d8_fcn configs (output
# stride 8), 21 VOC classes, plain BN, frozen backbone BN statistics (norm_eval=True). The ImageNet
# weights are torchvision's, converted by tools/model_converters/mobilenetv2_torchvision2mmseg.py
# (`make weights` writes data/pretrained/mobilenet_v2_imagenet.pth) instead of mmseg's mmcls:// download.
_base_ = 'mmseg::_base_/models/fcn_r50-d8.py'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='MobileNetV2',
        widen_factor=1.,
        strides=(1, 2, 2, 1, 1, 1, 1),
        dilations=(1, 1, 1, 2, 2, 4, 4),
        out_indices=(1, 2, 4, 6),
        norm_cfg=norm_cfg,
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained', checkpoint='data/pretrained/mobilenet_v2_imagenet.pth', prefix='backbone.')),
    decode_head=dict(in_channels=320, num_classes=21, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=96, num_classes=21, norm_cfg=norm_cfg))
