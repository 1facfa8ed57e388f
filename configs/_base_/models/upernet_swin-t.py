# UPerNet with the Swin-T backbone (patch 4, window 7; as mmseg's swin-tiny-patch4-window7-in1k-pre_upernet
# configs), 21 VOC classes, plain BN in the heads (the backbone's own norms are LayerNorms), from mmseg's
# ImageNet-1k Swin-T weights (downloaded by mmengine on first use; pass
# --cfg-options model.backbone.init_cfg=None to start from random weights).
_base_ = 'mmseg::_base_/models/upernet_swin.py'
norm_cfg = dict(type='BN', requires_grad=True)
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/swin/swin_tiny_patch4_window7_224_20220317-1cdeb081.pth'  # noqa
model = dict(
    backbone=dict(
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint),
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        use_abs_pos_embed=False,
        drop_path_rate=0.3,
        patch_norm=True),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=21, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=384, num_classes=21, norm_cfg=norm_cfg))
