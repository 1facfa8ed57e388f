# SegFormer-MiT-B0 on the bundled sample data (tools/make_sample_voc.py), one CPU process, 20 iterations
# from random initialisation (no weights are downloaded). Vanilla: no layer is compressed.
_base_ = [
    '../_base_/models/segformer_mit-b0.py', '../_base_/datasets/voc12aug_sample.py',
    '../_base_/default_runtime.py', '../_base_/schedules/sample_cpu.py'
]
crop_size = (128, 128)
model = dict(backbone=dict(init_cfg=None), data_preprocessor=dict(size=crop_size))
