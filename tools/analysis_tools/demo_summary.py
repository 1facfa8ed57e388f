"""The short summary at the end of `make demo`: mIoU of each stage, the gain, the memory table.

    python tools/analysis_tools/demo_summary.py WORK_DIR [--seconds N] [--docs PREFIX]

Reads the demo's work dir (tools/demo.sh): start/, calibrate/ and finetune/ (mmseg work dirs with a
validation), memory/memory.json and predictions.png. Prints the summary, writes it to WORK_DIR/summary.md,
and with --docs also to PREFIX.md with the picture copied to PREFIX_predictions.png (the README shows
those: `make demo DEMO_DOCS=docs/demo` regenerates them). The last line printed is
``mIoU on the target val split: before X, after Y``.
"""
import argparse
import json
import os.path as osp
import shutil
import sys

from mmseg_actcomp.memory.pareto import read_miou
from mmseg_actcomp.memory.report import format_summary


def summary(work, seconds=None):
    """(markdown text, the last line) of the demo run in ``work``."""
    source, before, after = (read_miou(osp.join(work, stage)) for stage in ('start', 'calibrate', 'finetune'))
    with open(osp.join(work, 'memory', 'memory.json')) as f:
        report = json.load(f)
    took = '' if seconds is None else f' It took {seconds / 60:.1f} min on this machine.'
    last = f'mIoU on the target val split: before {before:.2f}, after {after:.2f}'
    text = '\n'.join([
        f'Start: decode head trained on the source task, {source:.2f} mIoU on its own val split.',
        f'Target task (the VOC photo\'s objects): {before:.2f} mIoU with conv_seg calibrated, '
        f'{after:.2f} after fine-tuning the last 10 layers with HOSVD (eps {report.get("explained_variance")}'
        f'{", uncentred" if report.get("center") is False else ""}): '
        f'{after - before:+.2f} points.{took}', '',
        f'Activation memory of that fine-tuning step, batch {"x".join(map(str, report["batch_shape"]))} '
        f'(tools/measure_activation_memory.py, {report["num_batches"]} batches):', '',
        '```', format_summary(report), '```', '',
        '![val images, ground truth, prediction before and after](predictions.png)', '', last])
    return text, last


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('work_dir')
    p.add_argument('--seconds', type=float, help='how long the demo took, to say it')
    p.add_argument('--docs', help='also write PREFIX.md and PREFIX_predictions.png (e.g. docs/demo)')
    args = p.parse_args(argv)
    try:
        text, _ = summary(args.work_dir, args.seconds)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f'{args.work_dir} does not hold a finished demo run ({e}); run `make demo`')
    print('\n' + text)
    with open(osp.join(args.work_dir, 'summary.md'), 'w') as f:
        f.write(text + '\n')
    if args.docs:
        picture = f'{args.docs}_predictions.png'
        shutil.copyfile(osp.join(args.work_dir, 'predictions.png'), picture)
        with open(f'{args.docs}.md', 'w') as f:
            f.write(f'# The demo\'s summary\n\nWritten by `make demo DEMO_DOCS={args.docs}`; do not edit.\n\n'
                    + text.replace('](predictions.png)', f']({osp.basename(picture)})') + '\n')


if __name__ == '__main__':
    main()
