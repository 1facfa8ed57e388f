# SegFormer-MiT-B0, vanilla fine-tuning (nothing compressed) of the last 13 layers of the inference forward:
# the last MiT block whole (its attention's query, key, value and output projections, its Mix-FFN's three
# convs) and the head's six convs. benchmarks/grad_fidelity.py --model segformer runs it from the
# source-task checkpoint to measure what the compressed twins of these layers would compute.
#   python tools/train.py THIS_CONFIG --cfg-options load_from=CHECKPOINT
_base_ = './segformer_mit-b0_1xb8-100it_vocfinetune-128x128.py'
custom_hooks = [dict(type='ActivationCompressionHook', method='none', num_layers=13, require_load_from=True)]
