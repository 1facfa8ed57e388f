"""Memory-vs-mIoU Pareto plot of several measured runs (``memory.json`` reports + their mmseg logs).

mIoU comes from the run's training output, in this order of preference:

* a work dir: the last ``"mIoU"`` line of the newest ``<timestamp>/vis_data/scalars.json``;
* a ``scalars.json`` file: its last line holding ``"mIoU"``;
* a text log: the last ``mIoU: <value>`` of lines such as
  ``Iter(val) [8/8]    aAcc: 71.4700  mIoU: 5.9600  mAcc: 8.3300``.
"""
import glob
import json
import os.path as osp
import re
from typing import List, Optional, Sequence, Tuple

from .report import MIB

#: report figure -> (path into the report's ``totals``, axis label)
METRICS = {
    'measured': (('measured', 'total'), 'measured activation memory (MiB, mean)'),
    'region': (('measured', 'region'), 'measured memory of the fine-tuned region (MiB, mean)'),
    'estimate': (('estimate',), 'estimated activation memory (MiB, mean)'),
    'peak': (('peak',), 'peak step memory above the resting model (MiB, mean)'),
}
_LOG_MIOU = re.compile(r'\bmIoU:\s*([-+0-9.eE]+)')


def _last_scalars_miou(path: str) -> Optional[float]:
    value = None
    with open(path) as f:
        for line in f:
            if '"mIoU"' in line:
                value = float(json.loads(line)['mIoU'])
    return value


def _last_log_miou(path: str) -> Optional[float]:
    value = None
    with open(path, errors='replace') as f:
        for line in f:
            match = _LOG_MIOU.search(line)
            if match:
                value = float(match.group(1))
    return value


def read_miou(path: str) -> float:
    """The last validation mIoU of a run: ``path`` is its work dir, a ``scalars.json`` or a text log.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it holds no mIoU.
    """
    if osp.isdir(path):
        # Timestamped run folders sort by time: newest first, scalars before text logs.
        candidates = (sorted(glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json')), reverse=True)
                      + sorted(glob.glob(osp.join(path, '*', '*.log')), reverse=True))
        for candidate in candidates:
            try:
                return read_miou(candidate)
            except ValueError:
                continue
        raise ValueError(f'{path}: no scalars.json or .log with an mIoU under <timestamp>/')
    if not osp.isfile(path):
        raise FileNotFoundError(2, 'No such log file or work dir', path)
    value = _last_scalars_miou(path) if path.endswith('.json') else _last_log_miou(path)
    if value is None:
        raise ValueError(f'{path}: no mIoU in it (has the run been validated?)')
    return value


def report_memory_mib(report: dict, metric: str = 'measured') -> Optional[float]:
    """The report's mean figure ``metric`` (a key of :data:`METRICS`) in MiB; None if not available
    (e.g. ``peak`` on CPU, ``estimate`` without a compression hook)."""
    figure = report['totals']
    for key in METRICS[metric][0]:
        figure = figure.get(key) if figure else None
    if not figure or 'mean_bytes' not in figure:
        return None
    return figure['mean_bytes'] / MIB


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points ``(memory, miou)`` no other point dominates (memory no larger and mIoU no
    smaller, one of them strictly), sorted by memory."""
    front = []
    for i, (mem, miou) in enumerate(points):
        dominated = any(m <= mem and q >= miou and (m < mem or q > miou) for m, q in points)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def run_label(report: dict) -> str:
    """A short name of a run: its method, epsilon (or patch size) and layer count, e.g. ``'hosvd eps0.8 10L'``,
    ``'gradfilt R2 10L'``."""
    method = report.get('method') or 'vanilla (no hook)'
    eps, patch_size = report.get('explained_variance'), report.get('patch_size')
    parts = [method] + ([f'eps{eps:g}'] if eps is not None else []) + ([f'R{patch_size}'] if patch_size else [])
    if report.get('num_layers'):
        parts.append(f"{report['num_layers']}L")
    return ' '.join(parts)


def plot_pareto(points: Sequence[Tuple[float, float]], labels: Sequence[str], out: str,
                xlabel: str = METRICS['measured'][1]) -> List[int]:
    """Write a PNG scatter of ``points`` ``(memory MiB, mIoU)`` named by ``labels``, the Pareto front
    drawn as a line; return the front's indices (:func:`pareto_front`)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[0] for p in points], [p[1] for p in points], color='tab:blue', label='runs')
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color='tab:red',
            marker='o', label='Pareto front')
    for (x, y), label in zip(points, labels):
        ax.annotate(label, (x, y), textcoords='offset points', xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('mIoU')
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return front


def compare_reports(report_paths: Sequence[str], logs: Optional[Sequence[str]] = None,
                    metric: str = 'measured') -> List[dict]:
    """One ``{'report', 'label', 'memory_mib', 'miou', 'log'}`` per ``memory.json``; the log of each is
    ``logs[i]`` if given, else the ``log`` its report recorded (``--log`` at measuring time).

    Raises:
        ValueError: counts differ, a report has no log or its figure ``metric`` is not available.
    """
    if logs and len(logs) != len(report_paths):
        raise ValueError(f'--logs gives {len(logs)} logs for {len(report_paths)} reports: pair them')
    rows = []
    for i, path in enumerate(report_paths):
        with open(path) as f:
            report = json.load(f)
        log = logs[i] if logs else report.get('log')
        if not log:
            raise ValueError(f'{path} records no training log: pass --logs, one per report')
        memory = report_memory_mib(report, metric)
        if memory is None:
            raise ValueError(f'{path} has no {metric!r} figure (e.g. no peak where allocations were not '
                             'recorded)')
        rows.append({'report': path, 'label': run_label(report), 'memory_mib': memory,
                     'miou': read_miou(log), 'log': log})
    return rows
