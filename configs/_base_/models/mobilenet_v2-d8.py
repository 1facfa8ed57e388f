# The ImageNet MobileNetV2-d8 backbone of mmseg's mobilenet-v2-d8 configs (output stride 8), with plain
# BN and frozen BN statistics (norm_eval=True). Its weights are torchvision's, converted by
# tools/model_converters/mobilenetv2_torchvision2mmseg.py (`make weights` writes the file below) instead
# of mmseg's mmcls:// download. The model fragments beside this one put it in place of their ResNet.
mobilenet_v2_d8 = dict(
    _delete_=True,
    type='MobileNetV2',
    widen_factor=1.,
    strides=(1, 2, 2, 1, 1, 1, 1),
    dilations=(1, 1, 1, 2, 2, 4, 4),
    out_indices=(1, 2, 4, 6),
    norm_cfg=dict(type='BN', requires_grad=True),
    norm_eval=True,
    init_cfg=dict(type='Pretrained', checkpoint='data/pretrained/mobilenet_v2_imagenet.pth', prefix='backbone.'))
