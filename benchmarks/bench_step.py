"""Training-step time and kept activation memory of compressed fine-tuning against vanilla fine-tuning of
the same layers and mmseg's gradient checkpointing, per model, in one process.

For each config (an mmseg sample config with an ``ActivationCompressionHook`` on 10 layers), the segmentor
is built once (``init_weights()``: seeded random init for the R18 models, the ImageNet backbone for
MobileNetV2) and deep-copied per variant, so every variant starts from the same weights:

1. ``vanilla``: ``method='none'``, the same layers fine-tuned, nothing compressed (the baseline);
2. ``svd``: SVD, ε = the config's explained variance, ``lean_region`` on;
3. ``hosvd``: HOSVD, ``lean_region`` on (the default: region BNs on batch statistics keep their input in
   4 bits); ``hosvd-exact-bn``: the same with ``norm_input_bits=None`` (they keep it whole);
   ``hosvd-frozen-bn``: the same with ``freeze_region_norm_stats=True`` (region BNs keep nothing);
   ``hosvd-warm`` / ``hosvd-frozen``: the same with ``subspace='warm'`` / ``'frozen'`` (issue 14);
4. ``hosvd-paper``: HOSVD with ``lean_region=False`` (the paper's accounting: only conv inputs compressed);
   ``gradfilt-r2`` / ``gradfilt-r4``: the Gradient Filter (Yang et al., CVPR 2023) with 2x2 / 4x4 patches,
   ``lean_region`` on: each conv keeps its input summed over patches (approximate weight and input
   gradients, where HOSVD's input gradients are exact);
5. ``vanilla+cp``: vanilla with the backbone's ``with_cp=True`` set in the model config (the same
   weights loaded); it checkpoints the backbone's residual / inverted-residual blocks whose input needs a
   gradient, not the decode head.

Each variant is prepared as training does (``hook.prepare``, ``model.train()``, ``hook.before_train_iter``).
Memory: :func:`mmseg_actcomp.memory.measure_steps` on every pre-fetched batch (forward + backward, what
autograd keeps between them; mean over batches), split into the fine-tuned region and the rest, and the
paper's estimate (what the chosen convs keep). Time: forward + backward + ``torch.optim.SGD`` step on the
trainable parameters, the variants interleaved step by step (so that load drift on a shared machine hits
them alike) on the same batch sequence; the median over ``--steps`` after ``--warmup`` steps.

    python benchmarks/bench_step.py [--configs CFG ...] [--batches 3] [--steps 5] [--warmup 2]
        [--threads 1] [--seed 0] [--variants NAME ...] [--out-json PATH] [--markdown PATH]

``--paper-scale`` measures the paper's size instead (DeepLabV3- and PSPNet-MobileNetV2, ImageNet backbones;
SegFormer-MiT-B0 and UPerNet-Swin-T, random init, region target 10x, variants vanilla / hosvd / hosvd-paper;
512x512, batch 8, configs/paper_scale/)::

    python benchmarks/bench_step.py --paper-scale --out-json docs/bench_paper.json --markdown docs/bench_paper.md

Run it from the repository root: the sample configs read ``data/sample_voc`` (``python
tools/make_sample_voc.py --out data/sample_voc``) and the MobileNetV2 configs their backbone weights
(``make weights``, i.e. ``python tools/model_converters/mobilenetv2_torchvision2mmseg.py``) relative to the
working directory.
"""
import argparse
import contextlib
import copy
import json
import os
import os.path as osp
import shlex
import statistics
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence

import torch

from mmseg_actcomp.utils.table import align, kib, markdown_table, times

SAMPLE = 'configs/sample/'
DEFAULT_CONFIGS = [
    SAMPLE + 'deeplabv3_r18-d8_hosvd-0.8-10L_1xb2-20it_vocsample-128x128.py',
    SAMPLE + 'pspnet_r18-d8_hosvd-0.8-10L_1xb2-20it_vocsample-128x128.py',
    SAMPLE + 'fcn_r18-d8_hosvd-0.8-10L_1xb2-20it_vocsample-128x128.py',
    SAMPLE + 'upernet_r18_hosvd-0.8-10L_1xb2-20it_vocsample-128x128.py',
    SAMPLE + 'deeplabv3_mv2-d8_hosvd-0.8-10L_1xb4-40it_vocsample-128x128.py',
]
CONVERT_COMMAND = 'python tools/model_converters/mobilenetv2_torchvision2mmseg.py {path}'

#: name -> (hook overrides, backbone with_cp, description)
VARIANTS = {
    'vanilla': (dict(method='none'), False, 'same layers fine-tuned, nothing compressed (baseline)'),
    'svd': (dict(method='svd', lean_region=True), False, 'SVD, lean region'),
    'hosvd': (dict(method='hosvd', lean_region=True), False,
              'HOSVD, lean region (the default: region BNs on batch statistics keep their input in 4 bits)'),
    'hosvd-exact-bn': (dict(method='hosvd', lean_region=True, norm_input_bits=None), False,
                       'HOSVD, lean region, region BNs on batch statistics keep their input whole (exact)'),
    'hosvd-frozen-bn': (dict(method='hosvd', lean_region=True, freeze_region_norm_stats=True), False,
                        'HOSVD, lean region, region BNs on running statistics (keep nothing)'),
    'hosvd-warm': (dict(method='hosvd', lean_region=True, subspace='warm'), False,
                   "HOSVD, lean region, channel/spatial bases from one subspace iteration started at the last "
                   "step's (subspace='warm', exact every 8th step)"),
    'hosvd-frozen': (dict(method='hosvd', lean_region=True, subspace='frozen', subspace_batches=1), False,
                     "HOSVD, lean region, channel/spatial bases estimated on the first batch, then only "
                     "projected onto (subspace='frozen'; memory measured on all batches, the first while "
                     "estimating)"),
    'hosvd-budget': (dict(method='hosvd', lean_region=True), False,
                     "HOSVD, lean region, memory_budget_mib = what hosvd's convs kept (its estimate, the largest "
                     'over the batches): explained_variance chosen per layer for the least weight-gradient error '
                     'within it, on the first 2 batches'),
    'hosvd-paper': (dict(method='hosvd', lean_region=False), False,
                    "HOSVD, lean_region=False (the paper's accounting: only conv inputs compressed)"),
    'gradfilt-r2': (dict(method='gradfilt', patch_size=2, lean_region=True), False,
                    'Gradient Filter, 2x2 patches of the output gradient, lean region (each conv keeps its input '
                    'summed over patches; approximate weight and input gradients)'),
    'gradfilt-r4': (dict(method='gradfilt', patch_size=4, lean_region=True), False,
                    'Gradient Filter, 4x4 patches of the output gradient, lean region (each conv keeps its input '
                    'summed over patches; approximate weight and input gradients)'),
    'vanilla+cp': (dict(method='none'), True, "vanilla with the backbone's with_cp=True"),
}
BASELINE, TARGET_VARIANT = 'vanilla', 'hosvd'
#: the issues' targets for HOSVD on the last 10 layers (the region's: issue 12, at both scales)
MAX_TIME_RATIO, MAX_REGION_OVER_ESTIMATE, MIN_REGION_REDUCTION = 1.3, 1.25, 20.0
#: the transformer models at the paper's scale (issue 23; random init: no transformer weights ship here),
#: with their region target, and the variants they run (a UPerNet-Swin-T step at 512x512, batch 8 takes
#: about a minute on 2 cores: of the subspace variants only 'frozen', which skips the decompositions that
#: make most of SegFormer's HOSVD overhead (its 1024-channel fusion_conv input), so that the page says what
#: a user short of step time gets from it)
PAPER_TRANSFORMER_CONFIGS = ['configs/paper_scale/segformer_mit-b0_hosvd-10L_1xb8-100it_vocfinetune-512x512.py',
                             'configs/paper_scale/upernet_swin-t_hosvd-10L_1xb8-100it_vocfinetune-512x512.py']
TRANSFORMER_MIN_REGION_REDUCTION = 10.0
PAPER_TRANSFORMER_VARIANTS = ['vanilla', 'hosvd', 'hosvd-frozen', 'hosvd-paper']
#: --paper-scale: the paper's models and size (512x512, batch 8, ImageNet backbones), then the transformers
#: above, and the variants that matter there (each step takes seconds, not milliseconds)
PAPER_CONFIGS = ['configs/paper_scale/deeplabv3_mv2-d8_hosvd-0.8-10L_1xb8-100it_vocfinetune-512x512.py',
                 'configs/paper_scale/pspnet_mv2-d8_hosvd-0.8-10L_1xb8-100it_vocfinetune-512x512.py'
                 ] + PAPER_TRANSFORMER_CONFIGS
PAPER_VARIANTS = ['vanilla', 'hosvd', 'hosvd-warm', 'hosvd-frozen', 'hosvd-budget', 'hosvd-paper']
#: the variant whose budget is what TARGET_VARIANT's convs kept (so that both keep as much)
BUDGET_VARIANT = 'hosvd-budget'
#: issue 14's step-time targets of the subspace variants against vanilla (None: reported, no target)
SUBSPACE_TIME_TARGETS = {'hosvd-warm': 1.0, 'hosvd-frozen': None, 'hosvd-budget': None}
#: --paper-scale: two batches, so that a warm start comes from another batch's bases as in training, and
#: the median of 5 timed steps after 1 warm-up step (issue 14)
PAPER_BATCHES, PAPER_STEPS, PAPER_WARMUP = 2, 5, 1


class BenchError(Exception):
    """Missing data or weights, or a config this benchmark cannot run; the message says what to do."""


# --------------------------------------------------------------------------------------------- models
def _weights_note(cfg, seed: int) -> Dict[str, object]:
    """Where the weights come from, and whether the ranks say anything about fine-tuning."""
    init_cfg = cfg.model.backbone.get('init_cfg') or {}
    if init_cfg.get('type') == 'Pretrained':
        path = init_cfg['checkpoint']
        if not osp.isfile(path):
            raise BenchError(f'backbone weights {path!r} not found (run from the repository root); write '
                             f'them with:\n  {CONVERT_COMMAND.format(path=path)}')
        return {'pretrained': True, 'note': f'ImageNet backbone weights ({path}), head random (seed {seed}): '
                'real features, so the ranks and the estimate mean something'}
    return {'pretrained': False, 'note': f'random init (seed {seed}): the ranks of random weights\' activations '
            '(and so the estimate) say nothing about what fine-tuning a trained net keeps'}


def _cp_model(cfg, base: torch.nn.Module) -> torch.nn.Module:
    """The config's segmentor built with ``backbone.with_cp=True``, holding ``base``'s weights."""
    from mmseg.registry import MODELS
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.with_cp = True
    try:
        model = MODELS.build(cfg.model)
    except TypeError as exc:
        raise BenchError(f'backbone {cfg.model.backbone.type} does not take with_cp: {exc}') from exc
    model.load_state_dict(base.state_dict())
    return model


def _optimizer_args(cfg) -> dict:
    """lr / momentum / weight_decay of the config's SGD optimizer (the schedule's defaults otherwise)."""
    args = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
    optimizer = (cfg.get('optim_wrapper') or {}).get('optimizer') or {}
    if optimizer.get('type') == 'SGD':
        args.update({k: optimizer[k] for k in args if k in optimizer})
    return args


class CheckpointProbe:
    """Which backbone blocks with ``with_cp`` ran checkpointed (mmseg checkpoints a block only when its
    input needs a gradient): forward pre-hooks on modules holding a ``with_cp`` attribute."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        self.blocks = {name: m for name, m in backbone.named_modules()
                       if name and getattr(m, 'with_cp', None) is not None}
        self.checkpointed: Dict[str, bool] = {}
        self._handles = []

    def __enter__(self):
        for name, module in self.blocks.items():
            self._handles.append(module.register_forward_pre_hook(self._recorder(name)))
        return self

    def _recorder(self, name: str):
        def record(module, args) -> None:
            self.checkpointed[name] = bool(module.with_cp and args and args[0].requires_grad)
        return record

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


# ------------------------------------------------------------------------------------------ one model
def _time_steps(runs: Dict[str, dict], batches: List[dict], steps: int, warmup: int,
                device: str = 'cpu') -> None:
    """Forward + backward + SGD step of every variant, interleaved, on ``batches`` in turn; stores each
    variant's timed (post-warm-up) step seconds in ``run['times']`` (on CUDA, synchronized: the kernels'
    time, not their launch)."""
    sync = torch.cuda.synchronize if torch.device(device).type == 'cuda' else (lambda: None)
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        for run in runs.values():
            optimizer, loss_of_batch = run['optimizer'], run['loss']
            sync()
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of_batch(batch)
            loss.backward()
            optimizer.step()
            sync()
            elapsed = time.perf_counter() - start
            del loss
            if i >= warmup:
                run['times'].append(elapsed)


def _ratio(value: Optional[float], base: Optional[float]) -> Optional[float]:
    return value / base if value is not None and base else None


def _variant_figures(name: str, report: dict, times: List[float]) -> dict:
    measured, estimate = report['totals']['measured'], report['totals']['estimate']
    return {
        'description': VARIANTS[name][2], 'hook': report['hook'], 'with_cp': VARIANTS[name][1],
        'step_times_s': times, 'step_median_s': statistics.median(times),
        'peak_bytes': report['totals']['peak'].get('mean_bytes'),
        'measured_bytes': {k: measured[k]['mean_bytes'] for k in ('total', 'region', 'rest')},
        'estimate_bytes': estimate['mean_bytes'], 'estimate_peak_bytes': estimate['peak_bytes'],
        'per_op_region': {op: {'bytes': r['mean_bytes'], 'saves': r['saves']}
                          for op, r in report['per_op']['region'].items()},
        'ranks': {row['path']: row['ranks'] for row in report['layers']},
    }


def _targets(variants: Dict[str, dict], min_region_reduction: float = MIN_REGION_REDUCTION) -> List[dict]:
    """The issue's three targets for the HOSVD variant, each with its measured ratio and verdict.

    A storage saved both inside and outside the region counts in the region; once the region keeps it no
    more (e.g. the input a frozen auxiliary head also saves) it shows up in the rest. So that moving it
    cannot pass the target, whatever the rest keeps above vanilla's rest counts as HOSVD's region.
    """
    base, hosvd = variants[BASELINE], variants[TARGET_VARIANT]
    time_ratio = _ratio(hosvd['step_median_s'], base['step_median_s'])
    moved = max(0, hosvd['measured_bytes'].get('rest', 0) - base['measured_bytes'].get('rest', 0))
    region = hosvd['measured_bytes']['region'] + moved
    over_estimate = _ratio(region, hosvd['estimate_bytes'])
    reduction = _ratio(base['measured_bytes']['region'], region)
    return [
        {'target': f'step time <= {MAX_TIME_RATIO}x vanilla', 'value': time_ratio,
         'met': time_ratio is not None and time_ratio <= MAX_TIME_RATIO},
        {'target': f'measured region <= {MAX_REGION_OVER_ESTIMATE}x the estimate', 'value': over_estimate,
         'met': over_estimate is not None and over_estimate <= MAX_REGION_OVER_ESTIMATE},
        {'target': f'measured region >= {min_region_reduction:g}x below vanilla\'s', 'value': reduction,
         'met': reduction is not None and reduction >= min_region_reduction},
    ]


def bench_config(config: str, num_batches: int = 3, steps: int = 5, warmup: int = 2, seed: int = 0,
                 cfg_options: Optional[dict] = None, variant_names: Sequence[str] = tuple(VARIANTS),
                 min_region_reduction: float = MIN_REGION_REDUCTION, device: str = 'cpu') -> dict:
    """The variants ``variant_names`` (keys of :data:`VARIANTS`, vanilla and hosvd among them) of one
    config on ``device``: figures per variant, the HOSVD targets, notes."""
    from mmengine.runner import set_random_seed
    from mmseg.registry import HOOKS

    import mmseg_actcomp  # noqa: F401  (registers the hook and layers, as custom_imports would)
    from mmseg_actcomp.hooks import default_options
    from mmseg_actcomp.memory import build_report, measure_steps
    from mmseg_actcomp.apis.segmentor import (SegmentorLoss, build_segmentor, compression_hook_cfg, fit_budget,
                                                load_config, set_train_mode, train_batches)

    cfg = load_config(config, cfg_options)
    hook_cfg = compression_hook_cfg(cfg)
    if hook_cfg is None:
        raise BenchError(f'{config}: no ActivationCompressionHook in custom_hooks; give a *_hosvd-* config')
    weights = _weights_note(cfg, seed)
    set_random_seed(seed)
    batches = train_batches(cfg, num_batches, seed)
    set_random_seed(seed)
    base = build_segmentor(cfg).to(device)
    cp_base = _cp_model(cfg, base).to(device) if any(VARIANTS[n][1] for n in variant_names) else None
    optim_args = _optimizer_args(cfg)

    runs, layer_paths, cp_blocks = {}, None, {}
    for name in variant_names:
        overrides, with_cp, _ = VARIANTS[name]
        model = copy.deepcopy(cp_base if with_cp else base)
        entry = dict(hook_cfg, **overrides)
        if layer_paths is not None:  # the same layers for every variant, as the first one chose them
            entry.update(layers=layer_paths, num_layers=None)
        if name == BUDGET_VARIANT:
            entry.update(memory_budget_mib=runs[TARGET_VARIANT]['report']['totals']['estimate']['peak_mib'],
                         budget_batches=min(2, len(batches)))
        region = HOOKS.build(entry).region
        layer_paths = list(region.apply(model))
        set_train_mode(model, region)
        loss_of_batch = SegmentorLoss(model)
        if name == BUDGET_VARIANT:
            fit_budget(region, model, loss_of_batch, batches[:region.budget_batches])
            entry['explained_variance'] = dict(region.budget_choice)
        torch.manual_seed(seed)
        with CheckpointProbe(model.backbone) if with_cp else contextlib.nullcontext() as probe:
            memory = measure_steps(model, batches, loss_of_batch, layer_paths, device)
        if with_cp:
            cp_blocks = probe.checkpointed
        params = [p for p in model.parameters() if p.requires_grad]
        report = build_report(memory, layer_paths, {'hook': entry})
        runs[name] = {'model': model, 'loss': loss_of_batch, 'report': report, 'times': [],
                      'optimizer': torch.optim.SGD(params, **optim_args)}
    del base, cp_base
    torch.manual_seed(seed)
    _time_steps(runs, batches, steps, warmup, device)

    variants = {name: _variant_figures(name, run['report'], run['times']) for name, run in runs.items()}
    checkpointed = [b for b, on in cp_blocks.items() if on]
    return {
        'config': config, 'device': str(device),
        'model': f"{cfg.model.type}/{cfg.model.backbone.type}/{cfg.model.decode_head.type}",
        'weights': weights, 'batch_shape': list(runs[BASELINE]['loss'].input_shape),
        'num_batches': len(batches),
        'explained_variance': hook_cfg.get('explained_variance', default_options()['explained_variance']),
        'layers': layer_paths, 'optimizer': dict(type='SGD', **optim_args),
        'with_cp': {'checkpointed': checkpointed,
                    'not_checkpointed': [b for b, on in cp_blocks.items() if not on],
                    'note': ('with_cp checkpoints only backbone blocks whose input needs a gradient '
                             f"({', '.join(checkpointed) or 'none here'}); frozen blocks keep nothing "
                             'anyway, the decode head is never checkpointed; the recomputation\'s saves '
                             'during backward are transient and not in the measured figures')},
        'variants': variants, 'targets': _targets(variants, min_region_reduction),
    }


# ------------------------------------------------------------------------------------------ output
TABLE_HEADER = ('variant', 'step ms', 't/van', 'saved KiB', 's/van', 'region KiB', 'r/van', 'rest KiB',
                'estimate KiB', 'region/est')


def table_rows(result: dict) -> List[List[str]]:
    """One row per variant: median step time, measured total/region/rest, estimate, ratios to vanilla."""
    base = result['variants'][BASELINE]
    rows = []
    for name, v in result['variants'].items():
        m, bm = v['measured_bytes'], base['measured_bytes']
        time_ratio = _ratio(v['step_median_s'], base['step_median_s'])
        rows.append([name, f"{v['step_median_s'] * 1e3:.0f}", times(time_ratio, 2),
                     kib(m['total']), times(_ratio(m['total'], bm['total']), 2), kib(m['region']),
                     times(_ratio(m['region'], bm['region']), 3), kib(m['rest']), kib(v['estimate_bytes']),
                     times(_ratio(m['region'], v['estimate_bytes']), 2)])
    return rows


PER_OP_HEADER = ('HOSVD lean region, per op', 'keeps', 'KiB', 'share', 'saves')


def per_op_rows(result: dict, variant: str = TARGET_VARIANT) -> List[List[str]]:
    """The region's saves of ``variant`` per backward op, with what it keeps and its share."""
    per_op = result['variants'][variant]['per_op_region']
    total = sum(r['bytes'] for r in per_op.values()) or 1
    from mmseg_actcomp.memory.report import OP_KEEPS
    return [[op, OP_KEEPS.get(op, '-'), kib(r['bytes']), f"{100 * r['bytes'] / total:.0f}%",
             f"{r['saves']:g}"] for op, r in per_op.items()]


def target_lines(result: dict) -> List[str]:
    return [f"{'met' if t['met'] else 'MISSED'}: {t['target']}: measured {times(t['value'], 2)}"
            for t in result['targets']]


def _model_head(result: dict) -> List[str]:
    return [f"model {result['model']}  config {result['config']}",
            f"batch {'x'.join(map(str, result['batch_shape']))} x {result['num_batches']} batches, "
            f"eps {result['explained_variance']}, {len(result['layers'])} layers",
            f"weights: {result['weights']['note']}", f"with_cp: {result['with_cp']['note']}",
            'HOSVD ranks (max over batches): ' + ', '.join(
                f"{path} {'x'.join(map(str, ranks or ['-']))}"
                for path, ranks in result['variants'][TARGET_VARIANT]['ranks'].items())]


def format_text(results: Sequence[dict], meta: dict) -> str:
    parts = [f"threads {meta['threads']}, steps {meta['steps']} (warm-up {meta['warmup']}), "
             f"load average {meta['load_start']} -> {meta['load_end']}"]
    for result in results:
        parts.append('\n'.join(_model_head(result)))
        parts.append(align(TABLE_HEADER, table_rows(result)))
        parts.append('\n'.join(target_lines(result)))
        parts.append(align(PER_OP_HEADER, per_op_rows(result), left=2))
    parts.append('summary:\n' + '\n'.join(summary_lines(results)))
    return '\n\n'.join(parts)


def _span(values: Sequence[float], digits: int = 2, unit: str = 'x') -> str:
    low, high = (f'{v:.{digits}f}' for v in (min(values), max(values)))
    return f'{low}{unit}' if low == high else f'{low}-{high}{unit}'


def _verdict(results: Sequence[dict], index: int) -> str:
    """Target ``index`` over ``results``, one clause per target value (the transformer models' region
    target differs from the convolutional ones')."""
    groups: Dict[str, List[dict]] = {}
    for r in results:
        groups.setdefault(r['targets'][index]['target'], []).append(r)
    clauses = []
    for target, group in groups.items():
        met = [r['model'] for r in group if r['targets'][index]['met']]
        values = [r['targets'][index]['value'] for r in group if r['targets'][index]['value'] is not None]
        clauses.append(f"{target}: met on {len(met)} of {len(group)} models "
                       f"(measured {_span(values) if values else '-'})")
    return '; '.join(clauses)


def summary_lines(results: Sequence[dict]) -> List[str]:
    """What the figures say about the targets, computed from them (so a rerun keeps it true)."""
    mask_op = 'PackedMaskReLUFunctionBackward'
    masks = [r['variants'][TARGET_VARIANT]['per_op_region'].get(mask_op, {}).get('bytes', 0) for r in results]
    regions = [r['variants'][TARGET_VARIANT]['measured_bytes']['region'] for r in results]
    estimates = [r['variants'][TARGET_VARIANT]['estimate_bytes'] for r in results]
    paper = [_ratio(r['variants']['hosvd-paper']['step_median_s'], r['variants'][BASELINE]['step_median_s'])
             for r in results if 'hosvd-paper' in r['variants']]
    shares = [(p - 1) / (r['targets'][0]['value'] - 1) for p, r in zip(paper, results)
              if p is not None and r['targets'][0]['value'] and r['targets'][0]['value'] > 1]
    lines = [_verdict(results, 2) + '.', _verdict(results, 1) + '.']
    # ReLU models only (a transformer region has GELUs, no masks)
    relu = [(m, e, g, r) for m, e, g, r in zip(masks, estimates, regions, results) if m]
    if not all(r['targets'][1]['met'] for r in results) and relu and all(e for _, e, _, _ in relu):
        over = [m / e for m, e, _, _ in relu]
        line = (f"The packed ReLU masks alone are {_span(over, 1)} the estimate "
                f"({_span([100 * m / g for m, _, g, _ in relu], 0, '%')} of the region): 1 bit per "
                "element is the floor of an exact ReLU gradient, and the paper's estimate counts only the "
                'conv factors')
        random = [x for x, (_, _, _, r) in zip(over, relu) if not r['weights']['pretrained']]
        pretrained = [x for x, (_, _, _, r) in zip(over, relu) if r['weights']['pretrained']]
        if random:
            line += f"; with random-init weights the masks are {_span(random, 1)} the estimate"
        if pretrained:
            line += f"; with ImageNet weights the masks are still {_span(pretrained, 1)} the estimate"
        lines.append(line + '.')
    time_line = _verdict(results, 0)
    if paper:
        time_line += f"; HOSVD with lean_region=False (conv inputs only) takes {_span(paper)} vanilla's step"
    if shares:
        time_line += (f": the conv inputs' decompositions make {_span([100 * x for x in shares], 0, '%')}"
                      " of HOSVD's overhead on this CPU, the lean region (BN x_hat "
                      'decompositions, mask packing) the rest')
    lines.append(time_line + '.')
    lines += subspace_lines(results)
    for r in results:
        rests = [r['variants'][v]['measured_bytes']['rest'] for v in (TARGET_VARIANT, BASELINE)]
        if rests[0] > rests[1]:
            lines.append(f"{r['model']}: HOSVD's rest is {kib(rests[0] - rests[1])} KiB above vanilla's: "
                         "a storage that vanilla's region also kept (so counted there) is counted in the "
                         "rest once the region keeps it no more, e.g. the frozen auxiliary head's input.")
    return lines


def subspace_lines(results: Sequence[dict]) -> List[str]:
    """Step time and region of the subspace variants measured, against vanilla's and exact HOSVD's, with
    issue 14's step target for each (warm <= 1.0x vanilla; frozen reported beside it)."""
    lines = []
    for name, target in SUBSPACE_TIME_TARGETS.items():
        runs = [r for r in results if name in r['variants']]
        if not runs:
            continue
        ratios = [_ratio(r['variants'][name]['step_median_s'], r['variants'][BASELINE]['step_median_s'])
                  for r in runs]
        exact = [_ratio(r['variants'][name]['step_median_s'], r['variants'][TARGET_VARIANT]['step_median_s'])
                 for r in runs]
        region = [_ratio(r['variants'][name]['measured_bytes']['region'],
                         r['variants'][TARGET_VARIANT]['measured_bytes']['region']) for r in runs]
        met = sum(x <= target for x in ratios) if target else None
        line = f'{name} step time {_span(ratios)} vanilla, {_span(exact)} exact HOSVD\'s'
        if target:
            line += f' (target <= {target}x vanilla: met on {met} of {len(runs)} models)'
        line += f'; its region {_span(region)} exact HOSVD\'s'
        budgets = [r['variants'][name].get('hook', {}).get('memory_budget_mib') for r in runs]
        if all(budgets):
            kept = [r['variants'][name]['estimate_peak_bytes'] / 2**20 for r in runs]
            within = sum(k <= b for k, b in zip(kept, budgets))
            line += (f'; its convs kept {_span(kept, 3, " MiB")} at most against budgets of {_span(budgets, 3, " MiB")}'
                     f' (within on {within} of {len(runs)} models)')
        lines.append(line + '.')
    return lines


def format_markdown(results: Sequence[dict], meta: dict) -> str:
    out = ['# Training-step time and kept activation memory: vanilla vs SVD / HOSVD vs checkpointing', '',
           'Made by:', '', f"    {meta['command']}", '',
           f"Machine: {meta['machine']}; torch {meta['torch']} on {meta.get('device', 'cpu')}, "
           f"`torch.set_num_threads({meta['threads']})`; "
           f"load average (1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']}; "
           f"run took {meta['wall_s']:.0f} s.", '',
           'Columns: `step ms` median of forward + backward + SGD step over the timed steps (variants '
           'interleaved step by step on the same batches); `saved` what autograd keeps between forward '
           'and backward, parameters excluded (mean over batches), split into the fine-tuned `region` (the '
           'chosen convs and their parent modules) and the `rest`; `estimate` the paper\'s figure (what '
           'the chosen convs keep); `t/van`, `s/van`, `r/van` time, saved and region as a fraction of '
           "vanilla's; `region/est` the region over the estimate.", '']
    out += ['## Summary', '', '- ' + '\n- '.join(summary_lines(results)), '']
    for result in results:
        out += [f"## {result['model']}", '', '- ' + '\n- '.join(_model_head(result)), '',
                markdown_table(TABLE_HEADER, table_rows(result)), '',
                'Targets (HOSVD, issue):', '', '- ' + '\n- '.join(target_lines(result)), '',
                markdown_table(PER_OP_HEADER, per_op_rows(result)), '']
    return '\n'.join(out)


# ------------------------------------------------------------------------------------------ cli
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--configs', nargs='+', default=DEFAULT_CONFIGS, help='sample configs with the hook')
    parser.add_argument('--batches', type=int, default=3, help='train batches pre-fetched per model')
    parser.add_argument('--steps', type=int, default=5, help='timed training steps per variant')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first')
    parser.add_argument('--threads', type=int, default=1, help='torch.set_num_threads')
    parser.add_argument('--seed', type=int, default=0, help='weights, data order and augmentation')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N (benchmarks/gpu_check.sh)')
    parser.add_argument('--out-json', help='write all figures here')
    parser.add_argument('--markdown', help='write the markdown report here')
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS),
                        help=f'variants to run (default: all; {BASELINE} and {TARGET_VARIANT} always run)')
    parser.add_argument('--paper-scale', action='store_true',
                        help='the paper\'s scale: DeepLabV3- and PSPNet-MobileNetV2 (ImageNet backbones), '
                             'SegFormer-MiT-B0 and UPerNet-Swin-T (random init; variants '
                             f'{" ".join(PAPER_TRANSFORMER_VARIANTS)}) at '
                             f'512x512, batch 8, variants {" ".join(PAPER_VARIANTS)}, {PAPER_BATCHES} batches, '
                             f'{PAPER_STEPS} timed steps after {PAPER_WARMUP} warm-up, all cores (options given '
                             'explicitly still apply)')
    args = parser.parse_args(argv)
    given = set(a.split('=')[0] for a in (argv if argv is not None else sys.argv[1:]))
    if args.paper_scale:
        for name, value in (('configs', PAPER_CONFIGS), ('variants', PAPER_VARIANTS), ('batches', PAPER_BATCHES),
                            ('steps', PAPER_STEPS), ('warmup', PAPER_WARMUP), ('threads', os.cpu_count() or 1)):
            if f"--{name.replace('_', '-')}" not in given:
                setattr(args, name, value)
    args.variants = [v for v in VARIANTS if v in set(args.variants or VARIANTS) | {BASELINE, TARGET_VARIANT}]
    for name in ('batches', 'steps', 'threads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be >= 1')
    if args.warmup < 0:
        parser.error('--warmup must be >= 0')
    from mmseg_actcomp.apis import MeasureError
    from mmseg_actcomp.apis.segmentor import check_device
    try:
        check_device(args.device)
    except MeasureError as exc:
        parser.error(str(exc))
    return args


def _machine(device: str) -> str:
    """The hardware the figures come from, in words."""
    if torch.device(device).type == 'cuda':
        return f'{torch.cuda.get_device_name(device)} ({device}), {os.cpu_count()} CPU cores'
    return f'{os.cpu_count()} CPU cores, shared with other jobs, no GPU used'


def _load() -> str:
    return '/'.join(f'{v:.2f}' for v in os.getloadavg())


def main(argv=None) -> dict:
    """Run the benchmark; print the tables; return ``{'meta', 'results'}`` (also written by the options)."""
    args = parse_args(argv)
    command = 'python benchmarks/bench_step.py ' + ' '.join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    meta = {'command': command, 'device': args.device, 'threads': args.threads, 'steps': args.steps,
            'warmup': args.warmup,
            'paper_scale': args.paper_scale,
            'machine': _machine(args.device),
            'torch': torch.__version__,
            'load_start': _load()}
    start = time.perf_counter()
    results = []
    with warnings.catch_warnings():
        # mmseg's backbones call torch.utils.checkpoint without use_reentrant (torch's default, reentrant)
        warnings.filterwarnings('ignore', message='torch.utils.checkpoint: the use_reentrant')
        for config in args.configs:
            print(f'benchmarking {config} ...', flush=True)
            transformer = config in PAPER_TRANSFORMER_CONFIGS
            variants = [v for v in args.variants if not (args.paper_scale and transformer)
                        or v in PAPER_TRANSFORMER_VARIANTS]
            results.append(bench_config(
                config, args.batches, args.steps, args.warmup, args.seed, variant_names=variants,
                device=args.device,
                min_region_reduction=TRANSFORMER_MIN_REGION_REDUCTION if transformer else MIN_REGION_REDUCTION))
    meta.update(load_end=_load(), wall_s=time.perf_counter() - start)
    print(format_text(results, meta))
    if args.out_json:
        with open(args.out_json, 'w') as f:
            json.dump({'meta': meta, 'results': results}, f, indent=2)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(format_markdown(results, meta) + '\n')
    return {'meta': meta, 'results': results}


if __name__ == '__main__':
    from mmseg_actcomp.apis import MeasureError
    try:
        main()
    except (BenchError, MeasureError) as exc:
        print(f'\nerror: {exc}', file=sys.stderr)
        sys.exit(1)
