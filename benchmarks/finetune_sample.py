"""Does compressed fine-tuning still learn? mIoU and measured memory per method on the sample data.

From a checkpoint calibrated on the sample data with the repo's own configs (the steps of `make demo`:
head training on the frozen ImageNet MobileNetV2, then calibration of conv_seg), fine-tune the paper's
last 10 layers of DeepLabV3-MobileNetV2-d8 for the same number of iterations with each method, through
mmseg's tools/train.py; then measure each run's activation memory on real batches with
tools/measure_activation_memory.py and draw memory against mIoU (the Pareto plot of that tool).

    python benchmarks/finetune_sample.py [--iters 40] [--work-dir work_dirs/finetune_sample]
        [--calibrated CKPT] [--markdown docs/finetune_sample.md] [--plot docs/finetune_sample.png]

Everything runs as subprocesses of the user-facing tools, so the figures are what a user gets.
"""
import argparse
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time
from statistics import mean

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SAMPLE = osp.join('configs', 'sample')
HEAD = osp.join(SAMPLE, 'deeplabv3_mv2-d8_head-none_1xb4-80it_vocsample-128x128.py')
CALIB = osp.join(SAMPLE, 'deeplabv3_mv2-d8_calib-conv_seg_1xb4-40it_vocsample-128x128.py')
FINETUNE = osp.join(SAMPLE, 'deeplabv3_mv2-d8_hosvd-0.8-10L_1xb4-40it_vocsample-128x128.py')
#: name -> hook overrides of the fine-tuning config
METHODS = {
    'vanilla': dict(method='none'),
    'svd-0.9': dict(method='svd', explained_variance=0.9),
    'hosvd-0.8': dict(method='hosvd', explained_variance=0.8),
    'hosvd-0.9': dict(method='hosvd', explained_variance=0.9),
    # region BNs on running statistics: they keep nothing, but the forward changes
    'hosvd-0.8-frozen-bn': dict(method='hosvd', explained_variance=0.8, freeze_region_norm_stats=True),
}


def run(args, log):
    """Run a repo tool with this Python from the repo root; fail loudly with the tail of its output."""
    cmd = [sys.executable] + [str(a) for a in args]
    print('$', ' '.join(cmd[1:]), flush=True)
    with open(log, 'w') as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f'failed ({done.returncode}): {" ".join(cmd[1:])}\n' + ''.join(open(log).readlines()[-30:]))


def last_checkpoint(work_dir):
    with open(osp.join(REPO, work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def calibrate(work):
    """Head training then conv_seg calibration (the first steps of `make demo`); the calibrated ckpt."""
    run(['tools/train.py', HEAD, '--work-dir', f'{work}/head'], f'{REPO}/{work}/head.log')
    run(['tools/train.py', CALIB, '--work-dir', f'{work}/calibrate', '--cfg-options',
         f'load_from={last_checkpoint(f"{work}/head")}'], f'{REPO}/{work}/calibrate.log')
    return last_checkpoint(f'{work}/calibrate')


def hook_options(overrides):
    return [f'custom_hooks.0.{k}={v}' for k, v in overrides.items()]


def finetune(work, name, overrides, calibrated, iters):
    """Fine-tune with one method, then measure it; returns (memory.json path, work dir)."""
    run_dir = f'{work}/{name}'
    run(['tools/train.py', FINETUNE, '--work-dir', run_dir, '--cfg-options', f'load_from={calibrated}',
         f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
         f'default_hooks.checkpoint.interval={iters}'] + hook_options(overrides), f'{REPO}/{run_dir}.log')
    run(['tools/measure_activation_memory.py', FINETUNE, '--checkpoint', last_checkpoint(run_dir),
         '--num-batches', '3', '--out-dir', f'{run_dir}/memory', '--log', run_dir, '--cfg-options']
        + hook_options(overrides), f'{REPO}/{run_dir}/memory.log')
    return f'{run_dir}/memory/memory.json', run_dir


def decode_losses(log):
    """The decode-head training losses a run logged, in order (mmseg's ``decode.loss_ce: X``)."""
    with open(log) as f:
        return [float(m.group(1)) for m in re.finditer(r'Iter\(train\).*?decode\.loss_ce: ([\d.]+)', f.read())]


def table(rows, command, calibrated_miou):
    lines = [f'Command: `{command}`', '',
             f'Calibrated checkpoint: mIoU {calibrated_miou:.2f} on the sample val split before fine-tuning.', '',
             '| method | mIoU after | decode loss, mean of first 3 -> last 3 logged | measured region MiB '
             '| measured total MiB | paper estimate MiB |',
             '| --- | --- | --- | --- | --- | --- |']
    for name, miou, losses, report in rows:
        t = report['totals']
        measured = t['measured']
        estimate = t.get('estimate', {}).get('mean_mib')
        lines.append(f"| {name} | {miou:.2f} | {mean(losses[:3]):.3f} -> {mean(losses[-3:]):.3f} | "
                     f"{measured['region']['mean_mib']:.3f} | {measured['total']['mean_mib']:.3f} | "
                     f"{'n/a' if estimate is None else f'{estimate:.3f}'} |")
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--iters', type=int, default=40, help='fine-tuning iterations per method')
    p.add_argument('--work-dir', default='work_dirs/finetune_sample')
    p.add_argument('--calibrated', help='a calibrated checkpoint to start from (default: make one)')
    p.add_argument('--markdown', help='write the table here (e.g. docs/finetune_sample.md)')
    p.add_argument('--plot', default=None, help='Pareto plot PNG (default WORK_DIR/pareto.png)')
    p.add_argument('--report-only', action='store_true',
                   help='train nothing: tabulate the runs already in --work-dir')
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error(f'--iters must be >= 1, got {args.iters}')
    from mmseg_actcomp.memory.pareto import read_miou
    start = time.time()
    work = args.work_dir
    os.makedirs(osp.join(REPO, work), exist_ok=True)
    if args.report_only:
        calibrated = args.calibrated or last_checkpoint(f'{work}/calibrate')
    else:
        calibrated = args.calibrated or calibrate(work)
    calibrated_miou = read_miou(osp.join(REPO, osp.dirname(calibrated)))
    rows, jsons, logs = [], [], []
    for name, overrides in METHODS.items():
        if args.report_only:
            report_path, run_dir = f'{work}/{name}/memory/memory.json', f'{work}/{name}'
        else:
            report_path, run_dir = finetune(work, name, overrides, calibrated, args.iters)
        with open(osp.join(REPO, report_path)) as f:
            rows.append((name, read_miou(osp.join(REPO, run_dir)), decode_losses(f'{REPO}/{run_dir}.log'),
                         json.load(f)))
        jsons.append(report_path)
        logs.append(run_dir)
    plot = args.plot or f'{work}/pareto.png'
    run(['tools/measure_activation_memory.py', '--compare'] + jsons + ['--logs'] + logs
        + ['--metric', 'region', '--out', plot], f'{REPO}/{work}/compare.log')
    command = 'python benchmarks/finetune_sample.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    text = table(rows, command.strip(), calibrated_miou)
    text += (f'\n\nDeepLabV3-MobileNetV2-d8 (ImageNet backbone), the paper\'s 10 layers, {args.iters} iterations '
             f'of batch 4 at 128x128 on the CPU per method; memory measured on 3 train batches. '
             f'Pareto plot: `{plot}`.' + ('' if args.report_only else f' {time.time() - start:.0f} s in all.'))
    print('\n' + text)
    if args.markdown:
        with open(osp.join(REPO, args.markdown), 'w') as f:
            f.write('# Fine-tuning on the sample data: mIoU and memory per method\n\n' + text + '\n')


if __name__ == '__main__':
    main()
