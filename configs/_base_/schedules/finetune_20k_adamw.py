# ./finetune_20k.py (20k iterations, warm-up then cosine, gradient clipping at norm 1) with the optimizer
# mmseg trains its transformer backbones with: AdamW, lr 6e-5, weight decay 0.01, none on norms and
# position tables, the decode head's rate x10 (mmseg's SegFormer/Swin configs). SGD at 0.01 does not suit
# LayerNorm backbones.
_base_ = './finetune_20k.py'
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    clip_grad=dict(max_norm=1.0),
    paramwise_cfg=dict(custom_keys={
        'pos_block': dict(decay_mult=0.),
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
        'head': dict(lr_mult=10.)
    }))
