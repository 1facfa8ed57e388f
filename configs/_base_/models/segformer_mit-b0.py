# SegFormer with the MiT-B0 backbone (as mmseg's segformer_mit-b0 configs), 21 VOC classes, plain BN in the
# head (the backbone's own norms are LayerNorms), from mmseg's ImageNet MiT-B0 weights (downloaded by
# mmengine on first use; pass --cfg-options model.backbone.init_cfg=None to start from random weights).
_base_ = 'mmseg::_base_/models/segformer_mit-b0.py'
norm_cfg = dict(type='BN', requires_grad=True)
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b0_20220624-7e0fe6dd.pth'  # noqa
model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(num_classes=21, norm_cfg=norm_cfg))
