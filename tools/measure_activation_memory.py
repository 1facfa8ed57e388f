"""Measure the activation memory of fine-tuning with a config, or plot memory against mIoU for several runs.

    python tools/measure_activation_memory.py CONFIG [--checkpoint CKPT] [--num-batches 10]
        [--cfg-options KEY=VALUE ...] [--out-dir DIR] [--device cpu|cuda] [--log LOG] [--seed 0]
    python tools/measure_activation_memory.py --compare A.json B.json ... [--logs LOG_A LOG_B ...]
        [--metric measured|region|estimate|peak] [--out pareto.png]

The first form runs real forward+backward steps on the config's train data with its
ActivationCompressionHook applied, prints the tables and writes memory.json and memory.csv to --out-dir
(default work_dirs/memory/<config name>). The second reads such memory.json files and the mIoU of each
run (--logs, or the --log recorded when measuring: a work dir, scalars.json or text log) and draws the
Pareto plot. The logic lives in mmseg_actcomp.memory (measurement) and mmseg_actcomp.apis (the config's
side, its checks).
"""
import argparse
import importlib.util
import os
import os.path as osp
import sys

from mmengine.config import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', help='mmseg config to measure')
    parser.add_argument('--checkpoint', help='weights to load (default: the config\'s load_from)')
    parser.add_argument('--num-batches', type=int, default=10, help='train batches to measure')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    parser.add_argument('--out-dir', help='where memory.json / memory.csv go')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    parser.add_argument('--seed', type=int, default=0, help='seed of weight init and data order')
    parser.add_argument('--log', help='training log or work dir of this config, recorded for --compare')
    parser.add_argument('--compare', nargs='+', metavar='JSON', help='memory.json files to plot')
    parser.add_argument('--logs', nargs='+', help='one log / work dir per --compare report')
    parser.add_argument('--metric', default='measured', help='memory figure of the x axis')
    parser.add_argument('--out', default='pareto.png', help='PNG of --compare')
    args = parser.parse_args(argv)
    if (args.config is None) == (args.compare is None):
        parser.error('give either CONFIG or --compare JSON [JSON ...]')
    if args.num_batches < 1:
        parser.error(f'--num-batches must be >= 1, got {args.num_batches}')
    from mmseg_actcomp.memory.pareto import METRICS
    if args.metric not in METRICS:
        parser.error(f'--metric must be one of {sorted(METRICS)}, got {args.metric!r}')
    return args


def measure(args) -> None:
    from mmseg_actcomp.apis import measure_config
    from mmseg_actcomp.memory import format_report, write_report
    report = measure_config(args.config, args.checkpoint, args.num_batches, args.cfg_options,
                            args.device, args.seed, log=args.log)
    out_dir = args.out_dir or osp.join('work_dirs', 'memory', osp.splitext(osp.basename(args.config))[0])
    os.makedirs(out_dir, exist_ok=True)
    paths = write_report(report, out_dir)
    print(format_report(report))
    print(f"\nwrote {paths['json']} and {paths['csv']}")


def compare(args) -> None:
    from mmseg_actcomp.memory.pareto import METRICS, compare_reports, plot_pareto
    from mmseg_actcomp.memory.report import align
    rows = compare_reports(args.compare, args.logs, args.metric)
    front = plot_pareto([(r['memory_mib'], r['miou']) for r in rows], [r['label'] for r in rows],
                        args.out, METRICS[args.metric][1])
    table = [(r['label'], f"{r['memory_mib']:.3f}", f"{r['miou']:.2f}", '*' if i in front else '',
              r['report']) for i, r in enumerate(rows)]
    print(align(('run', f'{args.metric} MiB', 'mIoU', 'front', 'report'), table, left=1))
    print(f'\nwrote {args.out}')


def _hint(exc) -> str:
    """tools/mmseg_tool.py's hint (the commands of this checkout that make missing weights or data) for
    the typed config error behind ``exc``, if any."""
    from mmseg_actcomp.apis import ConfigError
    cause = exc if isinstance(exc, ConfigError) else exc.__cause__
    if not isinstance(cause, ConfigError):
        return ''
    spec = importlib.util.spec_from_file_location('mmseg_tool', osp.join(osp.dirname(osp.abspath(__file__)),
                                                                         'mmseg_tool.py'))
    mmseg_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mmseg_tool)
    return mmseg_tool.hint(cause)


def main(argv=None) -> None:
    args = parse_args(argv)
    from mmseg_actcomp.apis import MeasureError
    try:
        measure(args) if args.config is not None else compare(args)
    except (MeasureError, ValueError, FileNotFoundError) as exc:
        if os.environ.get('MMSEG_ACTCOMP_TRACEBACK'):
            raise
        print(f'\nerror: {exc}{_hint(exc)}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
