"""Turn measured steps into a report: a JSON-ready dict, an aligned text table, ``memory.json`` and
``memory.csv``.

Figures over several batches are given as ``mean`` and ``peak`` (the largest batch), in bytes and MiB.
A layer's ``ratio`` is ``vanilla_bytes / kept_bytes``: how many times less it keeps than the stock
``nn.Conv2d`` or ``nn.Linear`` would (1.0 for vanilla fine-tuning, the baseline).
"""
import csv
import json
import os.path as osp
from statistics import mean
from typing import Dict, Iterable, List, Optional, Sequence

from ..utils.table import align, kib, times
from .layers import LayerStep
from .measure import StepMemory
from .region import REGION_RULE, region_modules

MIB = 2 ** 20
CSV_COLUMNS = ('path', 'type', 'input_shape', 'ranks', 'vanilla_bytes', 'kept_bytes', 'kept_bytes_peak',
               'ratio')
PEAK_NOTE = 'n/a (no allocation records)'
#: what each backward op of a compressed model keeps for backward (the per-op tables' "keeps" column)
OP_KEEPS = {
    'CompressedConv2dFunctionBackward': 'conv input factors (what the estimate counts)',
    'CompressedLinearFunctionBackward': 'linear input factors (what the estimate counts)',
    'GradFilterConv2dFunctionBackward': 'conv input summed over patches (gradient filter; what the estimate '
                                        'counts)',
    'PackedMaskReLUFunctionBackward': 'ReLU mask, bit-packed (1 bit/element)',
    'PackedMaskPReLUFunctionBackward': 'PReLU mask, bit-packed (1 bit/element; frozen slope)',
    'PreluKernelBackward0': 'PReLU: its full input',
    'MulBackward0': 'elementwise product: its operands (e.g. an attention or gate map and the features)',
    'NativeBatchNormBackward0': 'BN: its full input (batch statistics: for the exact input gradient)',
    'QuantizedInputBatchNormFunctionBackward': 'BN on batch statistics: its input quantized '
                                               '(norm_input_bits per element, a range per plane)',
    'RunningStatsBatchNormFunctionBackward': 'BN on running statistics: x_hat factors (trainable gamma)',
    'QuantizedNormalisedLayerNormFunctionBackward': 'LayerNorm: its normalised input quantized '
                                                    '(norm_input_bits per element, a range per sample and '
                                                    'feature) and rstd per token',
    'NativeLayerNormBackward0': 'LayerNorm: its full input (with mean and rstd per token)',
    'QuantizedDerivativeGELUFunctionBackward': 'GELU: its derivative quantized (gelu_bits per element, a range '
                                               'per sample)',
    'GeluBackward0': 'GELU: its full input',
    'SoftmaxBackward0': 'softmax (attention): its full output',
    'BmmBackward0': 'batched matrix product (attention): its operands',
    'BaddbmmBackward0': 'batched matrix product plus a mask (attention): its operands',
    'ShapeOnlyAdaptiveAvgPool2dFunctionBackward': 'adaptive pooling (shape only)',
    'RegeneratedDropoutFunctionBackward': 'dropout (seed only)',
    'ReluBackward0': 'ReLU: its full output',
    'ConvolutionBackward0': 'conv: its full input',
}


def stats(values: Sequence[float]) -> Dict[str, float]:
    """``{'mean_bytes', 'peak_bytes', 'mean_mib', 'peak_mib'}`` of per-batch byte counts."""
    avg, peak = mean(values), max(values)
    return {'mean_bytes': avg, 'peak_bytes': peak, 'mean_mib': avg / MIB, 'peak_mib': peak / MIB}


def _ratio(vanilla: float, kept: float) -> Optional[float]:
    return vanilla / kept if kept else None


def _layer_row(path: str, steps: List[LayerStep]) -> dict:
    """One chosen layer over the batches it ran in: last input shape, per-mode max and mean ranks,
    mean and peak bytes."""
    row = {'path': path, 'type': None, 'input_shape': None, 'ranks': None, 'ranks_mean': None,
           'vanilla_bytes': None, 'kept_bytes': None, 'kept_bytes_peak': None, 'ratio': None}
    if not steps:
        return row
    ranks = [s.ranks for s in steps if s.ranks is not None]
    vanilla, kept = mean(s.vanilla_bytes for s in steps), mean(s.kept_bytes for s in steps)
    row.update(type=steps[-1].type, input_shape=list(steps[-1].input_shape), vanilla_bytes=vanilla,
               kept_bytes=kept, kept_bytes_peak=max(s.kept_bytes for s in steps),
               ratio=_ratio(vanilla, kept))
    if ranks:
        row['ranks'] = [max(mode) for mode in zip(*ranks)]
        row['ranks_mean'] = [mean(mode) for mode in zip(*ranks)]
    return row


def _estimate(steps: List[StepMemory], layer_paths: Sequence[str]) -> Optional[dict]:
    """The paper's figure per batch: sum of what the chosen layers keep; None without chosen layers."""
    if not layer_paths:
        return None
    kept = [sum(s.kept_bytes for s in step.layers.values()) for step in steps]
    vanilla = [sum(s.vanilla_bytes for s in step.layers.values()) for step in steps]
    return dict(stats(kept), vanilla=stats(vanilla), ratio=_ratio(mean(vanilla), mean(kept)))


def _per_op(steps: List[StepMemory], side: str) -> Dict[str, dict]:
    """Per backward op on one side of the split: bytes mean/peak over batches (0 where it saved nothing),
    exclusive bytes mean, saves per batch (mean)."""
    ops = sorted({op for step in steps for op in step.saved['per_op'][side]})
    table = {}
    for op in ops:
        rows = [step.saved['per_op'][side].get(op, {'bytes': 0, 'exclusive_bytes': 0, 'saves': 0})
                for step in steps]
        table[op] = dict(stats([r['bytes'] for r in rows]),
                         exclusive_mean_bytes=mean(r['exclusive_bytes'] for r in rows),
                         saves=mean(r['saves'] for r in rows))
    return dict(sorted(table.items(), key=lambda item: -item[1]['mean_bytes']))


def build_report(steps: List[StepMemory], layer_paths: Sequence[str], meta: dict) -> dict:
    """The JSON-ready report of ``steps`` (at least one).

    Args:
        steps: one :class:`~mmseg_actcomp.memory.measure.StepMemory` per batch.
        layer_paths: the fine-tuned layers, in the order to list them.
        meta: run description copied to the top of the report (config, method, explained_variance,
            device, batch_shape, versions, ...).

    Returns:
        ``meta`` plus ``layers`` (one row per layer: path, type, input_shape, ranks, ranks_mean,
        vanilla_bytes, kept_bytes, kept_bytes_peak, ratio), ``totals`` (``estimate``, ``measured``
        {total, region, rest, parameters_excluded, discarded}, ``peak``; each mean/peak), ``per_op``
        {region, rest}, ``region_rule`` and ``region_modules``.
    """
    if not steps:
        raise ValueError('build_report needs at least one measured step')
    saved = {key: stats([step.saved[key] for step in steps])
             for key in ('total', 'region', 'rest', 'parameters', 'discarded')}
    peaks = [step.peak_bytes for step in steps]
    peak = stats(peaks) if None not in peaks else {'available': False, 'note': PEAK_NOTE}
    return dict(
        meta,
        num_batches=len(steps),
        region_rule=REGION_RULE,
        region_modules=region_modules(layer_paths),
        layers=[_layer_row(p, [s.layers[p] for s in steps if p in s.layers]) for p in layer_paths],
        totals=dict(estimate=_estimate(steps, layer_paths), measured=saved, peak=peak),
        per_op={side: _per_op(steps, side) for side in ('region', 'rest')},
    )


def _shape_text(values: Optional[Iterable[int]], sep: str = 'x') -> str:
    return '-' if values is None else sep.join(str(v) for v in values)


def _layer_table(report: dict) -> str:
    header = ('layer', 'type', 'input shape', 'ranks (max)', 'vanilla KiB', 'kept KiB', 'ratio')
    rows = [(r['path'], r['type'] or '-', _shape_text(r['input_shape']), _shape_text(r['ranks']),
             kib(r['vanilla_bytes']), kib(r['kept_bytes']), times(r['ratio']))
            for r in report['layers']]
    estimate = report['totals']['estimate']
    if estimate is not None:
        rows.append(('total (estimate, mean)', '', '', '', kib(estimate['vanilla']['mean_bytes']),
                     kib(estimate['mean_bytes']), times(estimate['ratio'])))
    return align(header, rows, left=4)


def _mib_pair(figure: Optional[dict], missing: str) -> List[str]:
    if figure is None or 'mean_mib' not in figure:
        return [missing, missing]
    return [f"{figure['mean_mib']:.3f}", f"{figure['peak_mib']:.3f}"]


def _totals_table(report: dict) -> str:
    totals, measured = report['totals'], report['totals']['measured']
    peak_note = totals['peak'].get('note', 'n/a')
    rows = [
        ['estimate (paper: factors kept by the chosen convs)', *_mib_pair(totals['estimate'], 'n/a')],
        ['measured: saved for backward, parameters excluded', *_mib_pair(measured['total'], 'n/a')],
        ['  in the fine-tuned region', *_mib_pair(measured['region'], 'n/a')],
        ['  rest of the model', *_mib_pair(measured['rest'], 'n/a')],
        ['peak: the step, above the resting model', *_mib_pair(totals['peak'], peak_note)],
    ]
    return align(('whole model', 'mean MiB', 'peak MiB'), rows)


def _op_table(report: dict, side: str) -> str:
    rows = [(op, OP_KEEPS.get(op, '-'), f"{r['mean_mib']:.3f}", f"{r['exclusive_mean_bytes'] / MIB:.3f}",
             f"{r['saves']:g}") for op, r in report['per_op'][side].items()]
    return align((f'saved in the {side}, per op', 'keeps', 'MiB', 'only this op MiB', 'saves'), rows,
                 left=2)


def format_summary(report: dict) -> str:
    """The per-layer table (if any layer is fine-tuned) and the whole-model table of a report: what a
    short summary (the demo's) shows."""
    parts = [_layer_table(report)] if report['layers'] else []
    return '\n\n'.join(parts + [_totals_table(report)])


def _budget_text(report: dict) -> str:
    budget = report.get('memory_budget_mib')
    return '-' if budget is None else f'per layer (memory_budget_mib {budget:g})'


def format_report(report: dict) -> str:
    """The aligned text tables of a :func:`build_report` report: layers, whole model, per op."""
    patch = f"  patch_size {report['patch_size']}" if report.get('patch_size') else ''
    head = (f"config {report.get('config')}  method {report.get('method') or '- (no hook)'}{patch}  "
            f"eps {report.get('explained_variance') or _budget_text(report)}  layers {len(report['layers'])}  "
            f"device {report.get('device')}  batches {report['num_batches']}  "
            f"batch {_shape_text(report.get('batch_shape'))}")
    parts = [head]
    parts += [f"note: {note}" for note in report.get('notes', [])]
    parts += [format_summary(report), f"region rule: {report['region_rule']}"]
    parts += [_op_table(report, side) for side in ('region', 'rest') if report['per_op'][side]]
    return '\n\n'.join(parts)


def write_report(report: dict, out_dir: str) -> Dict[str, str]:
    """Write ``memory.json`` (the whole report) and ``memory.csv`` (one row per layer, columns
    :data:`CSV_COLUMNS`, then a ``TOTAL (estimate)`` row) to ``out_dir``; return their paths."""
    paths = {'json': osp.join(out_dir, 'memory.json'), 'csv': osp.join(out_dir, 'memory.csv')}
    with open(paths['json'], 'w') as f:
        json.dump(report, f, indent=2)
    with open(paths['csv'], 'w', newline='') as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction='ignore')
        writer.writeheader()
        for row in report['layers']:
            writer.writerow(dict(row, input_shape=_shape_text(row['input_shape']),
                                 ranks=_shape_text(row['ranks'])))
        estimate = report['totals']['estimate']
        if estimate is not None:
            writer.writerow({'path': 'TOTAL (estimate)', 'vanilla_bytes': estimate['vanilla']['mean_bytes'],
                             'kept_bytes': estimate['mean_bytes'], 'kept_bytes_peak': estimate['peak_bytes'],
                             'ratio': estimate['ratio']})
    return paths
