"""Does the hook work on the whole mmseg zoo? For each model family, take mmseg's own config of it (the
copy mmsegmentation ships) with the hook line a user adds (HOSVD, eps 0.8, ``num_layers=10``; where those
10 would hold no linear layer or attention projection of a model that has some, the layers named by
:func:`sweep_hook` instead: its last transformer layers and its head), then

1. measure one training step (the segmentor's own loss, forward + backward, train mode) on a random
   batch, vanilla fine-tuning of the same layers beside HOSVD: what the fine-tuned region keeps, and that
   every chosen layer gets its weight gradient;
2. train it with mmseg's stock loop (mmengine's ``Runner``, as ``tools/train.py`` builds it) for 3
   iterations on the bundled sample VOC data, validate once (mIoU) and save a checkpoint.

    python tools/zoo_sweep.py [--families fcn hrnet ...] [--size 128] [--batch 2] [--out docs/zoo.md]
                              [--data-root data/sample_voc/VOCdevkit/VOC2012 | --no-train]

Changes to mmseg's configs, all forced by this machine: SyncBN -> BN (one process), no pretrained
checkpoint download (``pretrained`` and every ``init_cfg`` of type ``Pretrained`` dropped: random init, so
ranks say nothing about a trained net; ``data_preprocessor.size`` set to the input, its ``size_divisor``
dropped); per-class loss weights that fit no head's class count dropped (SAN's VOC config keeps its
COCO-Stuff base's); for the stock loop, 21 VOC classes and the dataset, runtime and schedule of
``configs/sample`` (per-class loss weights written for another class count dropped: Cityscapes's,
Mask2Former's).

Per-family overrides (the tables below the imports):

* ``MIN_SIZE``: a head that needs a larger input than ``--size`` (LRASPP).
* ``IMG_SIZE``: backbones whose position tables are sized by ``backbone.img_size`` get the input's size
  (ViT, DeiT, SETR's ViT-L, Segmenter, DPT: absolute embeddings, interpolated otherwise at every step; BEiT,
  MAE: relative position tables, which are not). Swin pads each stage to its window (7) itself: no override.
* ``LABEL_STEPS``: a label the loss reads besides the segmentation map (PIDNet's ``gt_edge_map``) is
  derived from the random labels by the family's own pipeline step (``GenerateEdge``) in the step, and
  that step is added to the stock loop's training pipeline.
* ``TEST_SIZE_DIVISOR``: DDRNet and PIDNet add branches computed at different strides, which fit only for
  sizes that are a multiple of 64: the stock loop's validation images are padded to one (the step's input
  is square, of ``--size``). Sliding-window tests (all families whose config tests so) use windows of the
  input's size, where BEiT's and MAE's relative position tables fit.
* ``CLIP_TEXT_INIT``: SAN initialises only from its CLIP checkpoint (mmseg 1.2.2's text encoder leaves its
  ``positional_embedding`` and ``text_projection`` as ``torch.empty`` without it, and its head calls an
  ``init_weights`` that ``nn.Module`` lacks): its text encoder and head load a checkpoint written for the run
  with a random init of those two, as CLIP initialises them.
* ``NO_STOCK_LOOP``: SAN's stock loop is not run (the row says why): the hook traces a forward before the
  Runner initialises weights, and SAN's text encoder caches class embeddings at its first forward.
* ``REQUIRES``: families whose config builds from a package outside the stack (mmdet, mmpretrain:
  ``pip install -e .[zoo]``, ``requirements/zoo.txt``) or one not on PyPI at all (VPD's ``ldm``); the
  module is imported first, and a family whose import fails is a "skipped" row naming the package and
  the command that would install it, not a failure.
"""
import argparse
import atexit
import copy
import functools
import importlib
import math
import os.path as osp
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from typing import Sequence

#: family -> mmseg 1.2.2 config (the smallest backbone mmseg ships for it)
FAMILIES = {
    'fcn': 'fcn/fcn_r18-d8_4xb2-80k_cityscapes-512x1024.py',
    'pspnet': 'pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py',
    'deeplabv3': 'deeplabv3/deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024.py',
    'deeplabv3plus': 'deeplabv3plus/deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024.py',
    'upernet': 'upernet/upernet_r18_4xb2-40k_cityscapes-512x1024.py',
    'hrnet': 'hrnet/fcn_hr18s_4xb2-40k_cityscapes-512x1024.py',
    'ocrnet': 'ocrnet/ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py',
    'unet': 'unet/unet-s5-d16_deeplabv3_4xb4-40k_drive-64x64.py',
    'bisenetv1': 'bisenetv1/bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024.py',
    'bisenetv2': 'bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py',
    'stdc': 'stdc/stdc1_4xb12-80k_cityscapes-512x1024.py',
    'fastscnn': 'fastscnn/fast_scnn_8xb4-160k_cityscapes-512x1024.py',
    'cgnet': 'cgnet/cgnet_fcn_4xb4-60k_cityscapes-680x680.py',
    'erfnet': 'erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py',
    'icnet': 'icnet/icnet_r18-d8_4xb2-160k_cityscapes-832x832.py',
    'ann': 'ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'apcnet': 'apcnet/apcnet_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'danet': 'danet/danet_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'dmnet': 'dmnet/dmnet_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'dnlnet': 'dnlnet/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'emanet': 'emanet/emanet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
    'encnet': 'encnet/encnet_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'gcnet': 'gcnet/gcnet_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'isanet': 'isanet/isanet_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'nonlocal_net': 'nonlocal_net/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'point_rend': 'point_rend/pointrend_r50_4xb2-80k_cityscapes-512x1024.py',
    'sem_fpn': 'sem_fpn/fpn_r50_4xb2-80k_cityscapes-512x1024.py',
    'mobilenet_v3': 'mobilenet_v3/mobilenet-v3-d8-s_lraspp_4xb4-320k_cityscapes-512x1024.py',
    'mobilenet_v2': 'mobilenet_v2/mobilenet-v2-d8_fcn_4xb2-80k_cityscapes-512x1024.py',
    'resnest': 'resnest/resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024.py',
    'ccnet': 'ccnet/ccnet_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'psanet': 'psanet/psanet_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'fastfcn': 'fastfcn/fastfcn_r50-d32_jpu_psp_4xb2-80k_cityscapes-512x1024.py',
    'ddrnet': 'ddrnet/ddrnet_23-slim_in1k-pre_2xb6-120k_cityscapes-1024x1024.py',
    'pidnet': 'pidnet/pidnet-s_2xb6-120k_1024x1024-cityscapes.py',
    'knet': 'knet/knet-s3_r50-d8_fcn_8xb2-adamw-80k_ade20k-512x512.py',
    'segnext': 'segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py',
    'segformer': 'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
    'segmenter': 'segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py',
    'vit': 'vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py',
    'setr': 'setr/setr_vit-l_naive_8xb2-160k_ade20k-512x512.py',
    'dpt': 'dpt/dpt_vit-b16_8xb2-160k_ade20k-512x512.py',
    'beit': 'beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py',
    'mae': 'mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py',
    'swin': 'swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    'twins': 'twins/twins_pcpvt-s_fpn_fpnhead_8xb4-80k_ade20k-512x512.py',
    'san': 'san/san-vit-b16_voc12aug-640x640.py',
    'convnext': 'convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py',
    'poolformer': 'poolformer/fpn_poolformer_s12_8xb4-40k_ade20k-512x512.py',
    'maskformer': 'maskformer/maskformer_r50-d32_8xb2-160k_ade20k-512x512.py',
    'mask2former': 'mask2former/mask2former_r50_8xb2-90k_cityscapes-512x1024.py',
    'vpd': 'vpd/vpd_sd_4xb8-25k_nyu-480x480.py',
}
#: families whose head needs a larger input than --size (LRASPP pools with a 49x49 window at stride 8)
MIN_SIZE = {'mobilenet_v3': 448}
#: families whose backbone sizes its position embeddings (or relative position tables) by ``img_size``
IMG_SIZE = ('vit', 'setr', 'segmenter', 'dpt', 'beit', 'mae')
#: families whose backbone adds branches computed at different strides, so that validation images (any
#: aspect ratio) are padded to a multiple of this
TEST_SIZE_DIVISOR = {'ddrnet': 64, 'pidnet': 64}
#: multimodal families that initialise only from a CLIP checkpoint (mmseg 1.2.2's SAN: without one its text
#: encoder leaves two Parameters uninitialised and its head fails); they get a random one
CLIP_TEXT_INIT = ('san',)
#: families whose stock loop is not run, and why
NO_STOCK_LOOP = {
    'san': ("the hook's surgery traces a forward before mmengine's Runner initialises the weights, and SAN's "
            'CLIP text encoder caches its class embeddings at its first forward: the cache keeps those of the '
            'uninitialised weights (NaN), so training fails in the assignment (clearing the cache once the '
            'weights are initialised makes the loop run: a limitation of the hook with SAN, not fixed here)'),
}
_ZOO_EXTRA = "pip install -e '.[zoo]': requirements/zoo.txt"
#: family -> (module its config needs, the package that provides it, the command that installs it)
REQUIRES = {
    'convnext': ('mmpretrain', 'mmpretrain', _ZOO_EXTRA),
    'poolformer': ('mmpretrain', 'mmpretrain', _ZOO_EXTRA),
    'maskformer': ('mmdet', 'mmdet', _ZOO_EXTRA),
    'mask2former': ('mmdet', 'mmdet', _ZOO_EXTRA),
    # not on PyPI: CompVis's Stable Diffusion code; the config also downloads SD v1.5 weights and VPD is
    # a depth estimator (NYU), which the step's segmentation labels do not fit
    'vpd': ('ldm', "ldm (CompVis's Stable Diffusion code, not on PyPI)",
            'pip install git+https://github.com/CompVis/stable-diffusion'),
}
#: training-pipeline transforms that derive a label a model's loss reads from the segmentation map (PIDNet's
#: boundary loss: ``gt_edge_map``)
LABEL_STEPS = ('GenerateEdge',)
#: the ops that keep the chosen layers' compressed inputs (the rest of a region is what the lean region
#: keeps, or could not make lean)
COMPRESSED_OPS = ('CompressedConv2dFunctionBackward', 'CompressedLinearFunctionBackward')
HOOK = dict(type='ActivationCompressionHook', method='hosvd', explained_variance=0.8, num_layers=10)
#: issue 23's target for every passing family's region (vanilla's over HOSVD's); a row below it says why
MIN_REGION_REDUCTION = 5.0
#: why what an op keeps in a HOSVD region is left whole (the rows below MIN_REGION_REDUCTION): the ops that
#: keep activations no layer type holds
WHY_LEFT = {
    'BmmBackward0': 'an attention\'s products (q k^T, weights v) need both operands for their exact gradients, '
                    'and those are activations made inside the block (queries, keys, softmax weights, values), '
                    'no layer\'s input that a decomposition could replace; only recomputing the attention in '
                    'backward would drop them',
    'MulBackward0': 'an elementwise product (a gate or attention map times the features) needs both operands '
                    'for its exact gradient, and neither is a layer\'s input that a decomposition could replace',
    'ConvolutionBackward0': 'a convolution by a filter computed from the input (DMNet\'s dynamic filters) is no '
                            'layer with a weight to fine-tune: its gradient needs the whole input and filter',
}
WHY_LEFT['BaddbmmBackward0'] = WHY_LEFT['BmmBackward0']
#: the reason when the chosen layers' own decompositions keep the most
WHY_DECOMPOSED = ('the chosen layers\' decompositions keep the most: with random weights their inputs need high '
                  'ranks at eps 0.8 (trained features need lower ones: docs/ranks_real.md)')
#: where the last ``num_layers`` hold no linear layer or attention projection but the model has some (a
#: transformer backbone under a convolutional head: Swin, ViT, BEiT, Twins, ...), the sweep names its layers
#: instead: the last TRANSFORMER_LAYERS of those (with the projections that share their Parameter) and the
#: last traced layers up to ``num_layers`` (as configs/_base_/layers/upernet_swin-t.py does for Swin)
TRANSFORMER_LAYERS = 4
MIB = 2**20
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
#: the dataset (sample VOC, 128x128 crops), runtime and schedule the stock loop trains with
SAMPLE_CONFIG = osp.join(REPO_ROOT, 'configs', 'sample', 'deeplabv3_r18-d8_1xb2-20it_vocsample-128x128.py')
SAMPLE_DATA_ROOT = 'data/sample_voc/VOCdevkit/VOC2012'
VOC_CLASSES = 21
STOCK_ITERS = 3


def mmseg_config_dir() -> str:
    import mmseg
    return osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs')


def cpu_model_cfg(model_cfg: dict, size: int) -> dict:
    """``model_cfg`` (a plain dict) with SyncBN -> BN, pretrained weights dropped, the input size set (and a
    sliding-window test's window)."""
    from mmseg_actcomp.apis.checks import walk_dicts
    model_cfg = copy.deepcopy(model_cfg)
    for _, node in walk_dicts(model_cfg):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for key, value in node.items():
            if key == 'pretrained' or (key == 'init_cfg' and isinstance(value, dict)
                                       and value.get('type') == 'Pretrained'):
                node[key] = None  # (not walked into)
    model_cfg['data_preprocessor'] = dict(model_cfg.get('data_preprocessor') or {}, size=(size, size),
                                          size_divisor=None)  # mmseg pads to one of the two (SAN has both)
    test_cfg = model_cfg.get('test_cfg') or {}
    if test_cfg.get('mode') == 'slide':  # windows of the input's size (BEiT's position tables fit no other)
        model_cfg['test_cfg'] = dict(test_cfg, crop_size=(size, size), stride=(2 * size // 3,) * 2)
    return model_cfg


@functools.lru_cache(maxsize=None)
def clip_text_checkpoint(context_length: int, embed_dims: int, output_dims: int) -> str:
    """Path of a checkpoint holding a random init of the two CLIP text-encoder Parameters mmseg 1.2.2 leaves
    uninitialised without a checkpoint (``torch.empty``): ``text_encoder.positional_embedding``
    ``(context_length, embed_dims)``, std 0.01, and ``text_encoder.text_projection`` ``(embed_dims,
    output_dims)``, std ``embed_dims ** -0.5``, as CLIP initialises them (seed 0). Written once per process
    and shape, removed at its exit (:data:`CLIP_TEXT_INIT`)."""
    import torch
    generator = torch.Generator().manual_seed(0)
    state = {'text_encoder.positional_embedding': 0.01 * torch.randn(context_length, embed_dims, generator=generator),
             'text_encoder.text_projection': embed_dims ** -0.5 * torch.randn(embed_dims, output_dims,
                                                                             generator=generator)}
    directory = tempfile.mkdtemp(prefix='zoo_clip_')
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = osp.join(directory, 'clip_text_init.pth')
    torch.save(state, path)
    return path


def clip_text_init(model_cfg: dict) -> dict:
    """``model_cfg`` (a multimodal segmentor's) with its text encoder and decode head initialised from
    :func:`clip_text_checkpoint` (``init_cfg`` of type ``Pretrained_Part``, which each reads its own keys
    of: the head none, so it keeps its random init)."""
    import inspect

    from mmseg.models.text_encoder import CLIPTextEncoder
    model_cfg = copy.deepcopy(model_cfg)
    text = {name: p.default for name, p in inspect.signature(CLIPTextEncoder).parameters.items()}
    text.update(model_cfg['text_encoder'])
    init = dict(type='Pretrained_Part', checkpoint=clip_text_checkpoint(
        text['context_length'], text['embed_dims'], text['output_dims']))
    model_cfg['text_encoder']['init_cfg'] = model_cfg['decode_head']['init_cfg'] = init
    return model_cfg


def missing_requirement(family: str):
    """None if ``family``'s config can build here, else why not: ``'needs X (command)'``, from an import of
    the module it needs (:data:`REQUIRES`)."""
    if family not in REQUIRES:
        return None
    module, package, command = REQUIRES[family]
    try:
        importlib.import_module(module)
    except ImportError as e:
        return f'needs {package} ({command}): import {module} failed: {e}'.splitlines()[0]
    return None


def weight_grad(layer):
    """The gradient of a chosen layer's weight, None if none reached it: an attention projection's is its
    rows of the attention's Parameter (:class:`~mmseg_actcomp.ops.attention.AttentionProjection`)."""
    from mmseg_actcomp.ops.attention import AttentionProjection
    if not isinstance(layer, AttentionProjection):
        return layer.weight.grad
    grad = getattr(layer.attention, layer.weight_name).grad
    return grad[layer.rows] if grad is not None and layer.attention._qkv_same_embed_dim else grad


def weight_key(path: str, layer) -> str:
    """The state-dict key of the weight of the chosen layer at ``path``: ``path.weight``, or for an attention
    projection its attention's Parameter (``...attn.in_proj_weight``), whose rows it reads."""
    from mmseg_actcomp.ops.attention import AttentionProjection
    if isinstance(layer, AttentionProjection):
        return f'{path.rpartition(".")[0]}.{layer.weight_name}'
    return f'{path}.weight'


def largest_op_left(per_op: dict, region_bytes: int) -> dict:
    """What a compressed region keeps, from a step's ``saved['per_op']['region']`` and its ``region``
    bytes: ``decomposed_share``, the share the chosen layers' decompositions keep (:data:`COMPRESSED_OPS`),
    and, of the other ops, the one keeping the most: ``op``, its ``bytes``, ``share`` and the ``module``
    keeping most of it (no ``op`` if nothing else is kept). Shares of ``region_bytes``; a storage two ops
    keep counts for both."""
    share = (lambda nbytes: nbytes / region_bytes) if region_bytes else (lambda nbytes: 0.0)
    result = dict(decomposed_share=share(sum(row['bytes'] for op, row in per_op.items() if op in COMPRESSED_OPS)))
    left = [(row['bytes'], op) for op, row in per_op.items() if op not in COMPRESSED_OPS]
    if left:
        nbytes, op = max(left)
        result.update(op=op, bytes=nbytes, share=share(nbytes), module=per_op[op].get('module'))
    return result


def drop_mismatched_class_weights(model_cfg: dict) -> dict:
    """``model_cfg`` without the per-class loss weights whose length fits none of its heads' class counts
    (``n``, or ``n + 1`` with mask classification's no-object class): SAN's VOC config keeps the 172 of
    its COCO-Stuff base with 20 classes, which its loss rejects."""
    from mmseg_actcomp.apis.checks import walk_dicts
    model_cfg = copy.deepcopy(model_cfg)
    counts = {node['num_classes'] for _, node in walk_dicts(model_cfg) if isinstance(node.get('num_classes'), int)}
    fitting = counts | {n + 1 for n in counts}
    for _, node in walk_dicts(model_cfg):
        weights = node.get('class_weight')
        if isinstance(weights, (list, tuple)) and len(weights) not in fitting:
            node['class_weight'] = None
    return model_cfg


def loss_label_steps(cfg) -> list:
    """The steps of ``cfg``'s training pipeline that write labels its loss reads besides the
    segmentation map (:data:`LABEL_STEPS`), as config dicts."""
    pipeline = cfg.get('train_pipeline') or []
    return [dict(step) for step in pipeline if step.get('type') in LABEL_STEPS]


def voc_model_cfg(model_cfg: dict) -> dict:
    """``model_cfg`` with every head predicting the 21 VOC classes; per-class loss weights written for
    another class count are dropped (CGNet's Cityscapes weights), but those of a mask classifier (a head's
    class count plus the no-object class, which mmdet's MaskFormer head requires) become 1 for each VOC
    class and the no-object weight as it was. A text encoder (SAN's) gets the VOC class names as its
    vocabulary: its classes are the ones it embeds."""
    from mmseg.datasets import PascalVOCDataset

    from mmseg_actcomp.apis.checks import walk_dicts
    model_cfg = copy.deepcopy(model_cfg)
    if 'text_encoder' in model_cfg:
        model_cfg['text_encoder'].update(dataset_name=None, vocabulary=list(PascalVOCDataset.METAINFO['classes']))
    counts = {node['num_classes'] for _, node in walk_dicts(model_cfg) if isinstance(node.get('num_classes'), int)}
    for _, node in walk_dicts(model_cfg):
        if 'num_classes' in node:
            node['num_classes'] = VOC_CLASSES
        weights = node.get('class_weight')
        if isinstance(weights, (list, tuple)) and len(weights) != VOC_CLASSES:
            node['class_weight'] = [1.0] * VOC_CLASSES + [weights[-1]] if len(weights) - 1 in counts else None
    return model_cfg


def sweep_hook(model) -> dict:
    """The hook line the sweep runs on ``model`` (a bare segmentor, left as it is): :data:`HOOK`, or, where
    its ``num_layers`` would choose no linear layer or attention projection but the model has some, the same
    hook with ``layers`` named (:data:`TRANSFORMER_LAYERS`)."""
    from torch import nn
    from mmseg_actcomp.ops.attention import expose_attention_projections
    from mmseg_actcomp.ops.convert import layer_kind, tied_layers
    from mmseg_actcomp.ops.region import trainable_inference_layers
    probe = copy.deepcopy(model)
    expose_attention_projections(probe)
    order = trainable_inference_layers(probe)
    linear = [p for p in order if layer_kind(probe.get_submodule(p)) is not nn.Conv2d]
    count = HOOK['num_layers']
    if not linear or set(linear) & set(order[-count:]):
        return HOOK
    chosen = linear[-TRANSFORMER_LAYERS:]
    chosen += tied_layers(probe, chosen)
    chosen += [p for p in order if p not in chosen][-(count - len(chosen)):] if count > len(chosen) else []
    hook = {k: v for k, v in HOOK.items() if k != 'num_layers'}
    return dict(hook, layers=[p for p in order if p in chosen])


def stock_config(model_cfg: dict, data_root: str, work_dir: str, size: int, batch: int, seed: int,
                 label_steps: Sequence[dict] = (), hook: dict = HOOK):
    """The mmengine config ``tools/train.py`` would run: ``configs/sample``'s dataset, runtime and
    schedule with ``model_cfg`` (VOC classes), the ``hook`` line, 3 iterations, one validation and one
    checkpoint at the end, quiet logs; ``label_steps`` (:func:`loss_label_steps`) run before the training
    pipeline packs its inputs."""
    from mmengine.config import Config, ConfigDict
    cfg = Config.fromfile(SAMPLE_CONFIG)
    cfg.model = ConfigDict(voc_model_cfg(model_cfg))
    cfg.custom_imports = dict(imports=['mmseg_actcomp'], allow_failed_imports=False)
    cfg.custom_hooks = [hook]
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=STOCK_ITERS, val_interval=STOCK_ITERS)
    cfg.default_hooks.checkpoint.interval = STOCK_ITERS
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir, cfg.log_level, cfg.randomness = work_dir, 'WARNING', dict(seed=seed)
    # one name per run: the message hub and visualizer are global instances looked up by name (mmseg's
    # runtime names its visualizer 'visualizer', which would keep the first run's save_dir)
    cfg.experiment_name = cfg.visualizer.name = f'zoo_{osp.basename(work_dir)}_{time.time_ns()}'
    cfg.train_dataloader.batch_size = batch
    for dataset in cfg.train_dataloader.dataset.datasets:
        dataset.data_root = data_root
        for step in dataset.pipeline:  # the crop (and the scale it is cut from) at the sweep's size
            if step.type == 'RandomResize':
                step.scale = (4 * size, size)
            elif step.type == 'RandomCrop':
                step.crop_size = (size, size)
            elif step.type == 'Pad':
                step.size = (size, size)
        packing = next(i for i, step in enumerate(dataset.pipeline) if step.type == 'PackSegInputs')
        dataset.pipeline[packing:packing] = [copy.deepcopy(step) for step in label_steps]
    cfg.val_dataloader.dataset.data_root = data_root
    for step in cfg.val_dataloader.dataset.pipeline:
        if step.type == 'Resize':
            step.scale = (4 * size, size)
    cfg.test_dataloader = cfg.val_dataloader
    return cfg


def train_stock(model_cfg: dict, data_root: str, size: int, batch: int, seed: int,
                label_steps: Sequence[dict] = (), hook: dict = HOOK) -> dict:
    """Train ``model_cfg`` with the ``hook`` line through mmengine's ``Runner`` (``stock_config``, with
    ``label_steps``) in a temporary work dir: the last training loss, the validation mIoU, the hook's
    logged compression scalars, and whether the checkpoint holds the fine-tuned layers' weights."""
    import torch
    from mmengine.runner import Runner
    with tempfile.TemporaryDirectory(prefix='zoo_') as work_dir:
        cfg = stock_config(model_cfg, data_root, work_dir, size, batch, seed, label_steps, hook)
        runner = Runner.from_cfg(cfg)
        runner.train()
        hub = runner.message_hub
        loss = hub.get_scalar('train/loss').current()
        if not math.isfinite(loss):
            raise RuntimeError(f'the stock loop\'s training loss is {loss}')
        scalars = {k[len('train/actcomp_'):]: v.current() for k, v in hub.log_scalars.items()
                   if k.startswith('train/actcomp_')}
        if not scalars:
            raise RuntimeError('the hook logged no train/actcomp_* scalars in the stock loop')
        checkpoint = osp.join(work_dir, f'iter_{STOCK_ITERS}.pth')
        state = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
        hook = next(h for h in runner.hooks if type(h).__name__ == 'ActivationCompressionHook')
        missing = [p for p, layer in hook.region.fine_tuned.items() if weight_key(p, layer) not in state]
        if missing:
            raise RuntimeError(f'the checkpoint {checkpoint} lacks the weights of {missing}')
        return dict(train_loss=loss, miou=hub.get_scalar('val/mIoU').current(), actcomp=scalars)


def sweep_family(family: str, size: int = 128, batch: int = 2, seed: int = 0,
                 data_root: str = None) -> dict:
    """One family's row: ok, layers chosen (``linear_layers``: those of them that are linear layers or
    attention projections), region bytes vanilla / HOSVD, the op keeping the most of what HOSVD's region
    keeps besides the decompositions (:func:`largest_op_left`), step seconds, or the error; ``skipped`` (why)
    for a family whose config needs a package that is not installed (:func:`missing_requirement`); with
    ``data_root`` (the sample VOC), also the stock loop's loss and mIoU (``train_stock``)."""
    import torch
    from mmengine.config import Config, ConfigDict
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import HOOKS, TRANSFORMS
    from mmseg.structures import SegDataSample

    import mmseg_actcomp  # noqa: F401  (registers the hook and layers)
    from torch import nn
    from mmseg_actcomp.apis.checks import walk_dicts
    from mmseg_actcomp.memory import measure_step
    from mmseg_actcomp.ops.convert import layer_kind
    from mmseg_actcomp.apis.segmentor import build_segmentor

    config = FAMILIES[family]
    row = dict(family=family, config=config, ok=False)
    start = time.perf_counter()
    skipped = missing_requirement(family)
    if skipped:
        return dict(row, skipped=skipped, seconds=time.perf_counter() - start)
    try:
        init_default_scope('mmseg')
        cfg = Config.fromfile(osp.join(mmseg_config_dir(), config))
        size = max(size, MIN_SIZE.get(family, 0))
        torch.manual_seed(seed)
        model_cfg = drop_mismatched_class_weights(cpu_model_cfg(cfg.model.to_dict(), size))
        if family in IMG_SIZE:
            model_cfg['backbone']['img_size'] = (size, size)
        if family in CLIP_TEXT_INIT:
            model_cfg = clip_text_init(model_cfg)
        if family in TEST_SIZE_DIVISOR:
            model_cfg['data_preprocessor']['test_cfg'] = dict(size_divisor=TEST_SIZE_DIVISOR[family])
        # a ConfigDict, as training builds it: heads read test_cfg.mode as an attribute
        cfg.model = ConfigDict(model_cfg)
        model = build_segmentor(cfg)  # init_weights(), quietly; mmseg's configs load no checkpoint
        row['input'] = f'{batch}x3x{size}x{size}'
        generator = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, 3, size, size, generator=generator)
        # the first head's class count, where it sits (K-Net's in its kernel_generate_head)
        num_classes = next(node['num_classes'] for _, node in walk_dicts(model_cfg['decode_head'])
                           if 'num_classes' in node)
        labels = torch.randint(0, num_classes, (batch, 1, size, size), generator=generator)
        shape = dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size))
        samples = [SegDataSample(gt_sem_seg=PixelData(data=label), metainfo=shape) for label in labels]
        label_steps = loss_label_steps(cfg)
        for step_cfg in label_steps:  # e.g. PIDNet's boundary loss reads gt_edge_map
            transform = TRANSFORMS.build(step_cfg)
            for sample, label in zip(samples, labels):
                results = transform(dict(gt_seg_map=label[0].numpy(), seg_fields=['gt_seg_map'],
                                         img_shape=(size, size)))
                key = next(k for k in results if k.startswith('gt_') and k != 'gt_seg_map')
                sample.set_data({key: PixelData(data=torch.from_numpy(results[key][None]).long())})

        def loss_of(net):
            return net.parse_losses(net(x, samples, mode='loss'))[0]
        hook = sweep_hook(model)
        if 'layers' in hook:
            row['named_layers'] = True
        region = {}
        for method in ('none', 'hosvd'):
            net = copy.deepcopy(model)
            fine_tune = HOOKS.build(dict(hook, method=method)).region
            paths = fine_tune.apply(net)
            net.train()
            fine_tune.set_norms_eval()
            step = measure_step(net, lambda: loss_of(net), paths)
            loss_of(net).backward()  # measure_step leaves no gradients: check they reach every chosen layer
            missing = [p for p in paths if weight_grad(net.get_submodule(p)) is None]
            if missing:
                raise RuntimeError(f'no weight gradient reached {missing}')
            region[method] = step.saved['region']
            row['layers'] = paths
            row['lean_ops'] = sorted(step.saved['per_op']['region'])
            row['linear_layers'] = [p for p in paths if layer_kind(net.get_submodule(p)) is not nn.Conv2d]
        row.update(region_vanilla_bytes=region['none'], region_hosvd_bytes=region['hosvd'],
                   largest_op_left=largest_op_left(step.saved['per_op']['region'], region['hosvd']))
        if data_root is not None and family in NO_STOCK_LOOP:
            row['stock_skipped'] = NO_STOCK_LOOP[family]
        elif data_root is not None:
            row['stock'] = train_stock(cfg.model.to_dict(), data_root, size, batch, seed, label_steps, hook)
        row['ok'] = True
    except Exception as e:  # a row per family, whatever breaks
        row['error'] = f'{type(e).__name__}: {e}'.splitlines()[0][:300]
        row['traceback'] = traceback.format_exc(limit=-3)
    row['seconds'] = time.perf_counter() - start
    return row


def why_left(row: dict) -> str:
    """Why the row's HOSVD region is less than :data:`MIN_REGION_REDUCTION` below vanilla's: the reason
    for its largest op (:data:`WHY_LEFT`, :data:`WHY_DECOMPOSED`); '' for a row at or above it."""
    vanilla, hosvd, left = row.get('region_vanilla_bytes'), row.get('region_hosvd_bytes'), row.get('largest_op_left')
    if not (vanilla and hosvd and left) or vanilla / hosvd >= MIN_REGION_REDUCTION:
        return ''
    if left.get('share', 0) < left['decomposed_share']:
        return WHY_DECOMPOSED
    return WHY_LEFT.get(left['op'], 'not investigated')


def largest_op_cell(row: dict) -> str:
    """``largest_op_left`` as a table cell: op, MiB and share of the HOSVD region, the module keeping most of
    it, and what that op keeps (the memory report's ``OP_KEEPS``); below :data:`MIN_REGION_REDUCTION`, why
    (:func:`why_left`)."""
    from mmseg_actcomp.memory.report import OP_KEEPS
    left = row.get('largest_op_left')
    if not left:
        return ''
    cell = f"decompositions {left['decomposed_share']:.0%}"
    if 'op' in left:
        keeps = OP_KEEPS.get(left['op'])
        cell += (f"; `{left['op']}` {left['bytes'] / MIB:.2f} MiB ({left['share']:.0%})"
                 + (f" in `{left['module']}`" if left['module'] else '') + (f': {keeps}' if keeps else ''))
    why = why_left(row)
    return cell + (f'. **Below {MIN_REGION_REDUCTION:g}x**: {why}' if why else '')


def markdown(rows, command: str, size: int, batch: int) -> str:
    ok = sum(r['ok'] for r in rows)
    skipped = [r for r in rows if r.get('skipped')]
    trained = any('stock' in r for r in rows)
    lines = ['# The hook across the mmseg zoo', '',
             f'Written by `{command}`; do not edit: rerun the command.', '',
             f'{ok} of {len(rows)} families pass'
             + (f', {len(skipped)} skipped (their config needs a package that is not installed here: the row '
                'names it and the command that installs it)' if skipped else '')
             + f': mmseg 1.2.2\'s own config of each (SyncBN -> BN, random '
             f'init) with `{HOOK}`. **Step**: a random input {batch}x3x{size}x{size} unless the row says '
             'otherwise, random labels, one training step (the model\'s loss, forward + backward) '
             'measured, and the weight gradient checked on every chosen layer; `region` is what the '
             'fine-tuned region keeps for backward with vanilla fine-tuning of the same layers '
             '(`method=\'none\'`) and with HOSVD (random weights: ranks say nothing about a trained net). '
             '**linear/attn**: how many of the chosen layers are linear layers or attention projections '
             f'(the rest are convolutions); *named*: the last {HOOK["num_layers"]} hold none though the model has '
             f'some, so the sweep names the layers instead (`layers=[...]`): the last {TRANSFORMER_LAYERS} linear '
             'layers or attention projections of the trace (with the projections that share their Parameter) '
             'and the last traced layers up to the same count. **largest op left**: '
             'the share of the HOSVD region that the chosen layers\' decompositions keep, then, of the rest, '
             'the backward op keeping the most (its MiB and share of the region, the module keeping most of '
             'it, and what that op keeps), from the step\'s saved-tensor breakdown (`mmseg_actcomp.memory`).']
    if trained:
        lines[-1] += (f' **Stock loop**: mmengine\'s `Runner` from the config, as `tools/train.py` builds it, '
                      f'with `configs/sample`\'s dataset (sample VOC, 21 classes, crops of the step\'s size), '
                      f'runtime and schedule: {STOCK_ITERS} iterations, one validation, one checkpoint '
                      '(checked to hold every chosen layer); its last loss and the mIoU of 3 iterations from '
                      'random init (near 0: it shows the loop ran, not that the model learnt).')
    passed = [r for r in rows if r['ok']]
    below = [r['family'] for r in passed if why_left(r)]
    lines += ['', f'Region target (issue 23): {len(passed) - len(below)} of {len(passed)} passing families keep a '
              f'HOSVD region at least {MIN_REGION_REDUCTION:g}x below vanilla\'s'
              + (f'; the rows of {", ".join(below)} say what keeps the rest and why ("Below '
                 f'{MIN_REGION_REDUCTION:g}x").' if below else '.')]
    lines += ['', '| family | config | input | pass | layers chosen (first ... last) | linear/attn '
              '| region vanilla MiB | region HOSVD MiB | less | largest op left in the HOSVD region |'
              + (' stock loss | stock mIoU |' if trained else '') + ' s | error |',
              '|' + ' --- |' * (14 if trained else 12)]
    for r in rows:
        layers = r.get('layers') or []
        chosen = f"{len(layers)}: `{layers[0]}` ... `{layers[-1]}`" if layers else ''
        linear = str(len(r['linear_layers'])) if 'linear_layers' in r else ''
        if r.get('named_layers'):
            linear += ' (named)'
        vanilla, hosvd = r.get('region_vanilla_bytes'), r.get('region_hosvd_bytes')
        less = f'{vanilla / hosvd:.1f}x' if vanilla and hosvd else ''
        stock = ''
        if trained:
            s = r.get('stock')
            stock = (f" {s['train_loss']:.3f} | {s['miou']:.2f} |" if s else
                     ' not run | not run |' if r.get('stock_skipped') else '  |  |')
        passed = 'yes' if r['ok'] else 'skipped' if r.get('skipped') else 'NO'
        error = r.get('error') or (f"skipped: {r['skipped']}" if r.get('skipped') else '') or (
            f"stock loop not run: {r['stock_skipped']}" if trained and r.get('stock_skipped') else '')
        lines.append(f"| {r['family']} | `{r['config']}` | {r.get('input', '')} | {passed} | "
                     f"{chosen} | {linear} | "
                     f"{'' if vanilla is None else f'{vanilla / MIB:.2f}'} | "
                     f"{'' if hosvd is None else f'{hosvd / MIB:.2f}'} | {less} | "
                     f"{largest_op_cell(r).replace('|', '/')} |{stock} {r['seconds']:.0f} | "
                     f"{error.replace('|', '/')} |")
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--families', nargs='+', choices=list(FAMILIES), default=list(FAMILIES))
    p.add_argument('--size', type=int, default=128, help='input height and width')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--out', help='write the markdown table here (e.g. docs/zoo.md)')
    p.add_argument('--data-root', default=SAMPLE_DATA_ROOT,
                   help='the sample VOC the stock loop trains on (make sample-data writes it)')
    p.add_argument('--no-train', action='store_true', help='only the measured step, not the stock loop')
    args = p.parse_args(argv)
    if args.size < 32 or args.batch < 1:
        p.error(f'--size must be >= 32 and --batch >= 1, got {args.size} and {args.batch}')
    data_root = None if args.no_train else osp.abspath(args.data_root)
    if data_root is not None and not osp.isfile(osp.join(data_root, 'ImageSets', 'Segmentation', 'val.txt')):
        p.error(f'--data-root {args.data_root}: no sample VOC there (no ImageSets/Segmentation/val.txt); '
                'run `make sample-data` or `python tools/make_sample_voc.py --out data/sample_voc`, '
                'or give --no-train')
    warnings.filterwarnings('ignore')
    rows = []
    for family in args.families:
        row = sweep_family(family, args.size, args.batch, data_root=data_root)
        status = 'ok  ' if row['ok'] else 'skip' if row.get('skipped') else 'FAIL'
        print(f"{status} {family:14s} {row['seconds']:5.1f} s  "
              f"{row.get('error') or row.get('skipped') or ''}", flush=True)
        rows.append(row)
    command = 'python tools/zoo_sweep.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    text = markdown(rows, command.strip(), args.size, args.batch)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    print(text)
    return 0 if all(r['ok'] or r.get('skipped') for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
