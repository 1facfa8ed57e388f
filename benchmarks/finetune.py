"""Does compressed fine-tuning learn as vanilla fine-tuning does? mIoU gain, memory and step time per
method, over seeds, on the learning benchmark's real-pixel data.

The protocol mirrors the paper's (Cityscapes-trained start, conv_seg calibrated on VOC, then the last
layers fine-tuned on VOC), scaled to a CPU:

1. start: the decode head of DeepLabV3-MobileNetV2-d8 trained on the *source* task (ARC 2017 objects on
   real backgrounds, other classes) on the frozen ImageNet backbone;
2. calibration: only conv_seg trained on the *target* task (the real VOC photo's objects on real
   backgrounds, VOC labels), from the start;
3. fine-tuning of the paper's last 10 layers on the target from the calibrated checkpoint, once per method
   and seed; the seed sets the data order and augmentation, the same for every method.

Every stage is a run of the user-facing tools/train.py with the configs in configs/finetune/, and each
run's activation memory is measured by tools/measure_activation_memory.py, so the figures are what a user
gets. Writes, in one go, OUT.md (the table), OUT.json, OUT_curves.png (val mIoU against iteration, mean
and seed band per method) and OUT_pareto.png (region memory against final mIoU)::

    python benchmarks/finetune.py [--seeds 0 1 2] [--iters 100] [--val-interval 50] [--jobs 2]
        [--work-dir work_dirs/finetune] [--out docs/finetune] [--methods none hosvd-0.8 ...]
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from statistics import mean, pstdev

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join('configs', 'finetune')
HEAD = osp.join(CONFIGS, 'deeplabv3_mv2-d8_head-source_1xb8-150it_vocfinetune-128x128.py')
CALIB = osp.join(CONFIGS, 'deeplabv3_mv2-d8_calib-conv_seg_1xb8-100it_vocfinetune-128x128.py')
FINETUNE = osp.join(CONFIGS, 'deeplabv3_mv2-d8_hosvd-0.8-10L_1xb8-100it_vocfinetune-128x128.py')
DATA = 'data/finetune_voc'
DATA_COMMAND = f'python tools/make_sample_voc.py --data finetune --out {DATA}'
#: method key -> hook overrides of the fine-tuning config (method, explained variance, BN handling)
#: (the hook's other defaults apply: region BNs on batch statistics keep their input in 4 bits).
#: The explained-variance and centring ablations were measured with region BNs keeping their input whole
#: (norm_input_bits=None), before 4 bits became the default; the `region BNs keep` column says so.
METHODS = {
    'none': dict(method='none'),
    'hosvd-0.8': dict(method='hosvd', explained_variance=0.8),
    # the region's BNs on batch statistics keep their input whole (exact), or in 8 or 2 bits
    'hosvd-0.8-exact-bn': dict(method='hosvd', explained_variance=0.8, norm_input_bits=None),
    'hosvd-0.8-bn8': dict(method='hosvd', explained_variance=0.8, norm_input_bits=8),
    'hosvd-0.8-bn2': dict(method='hosvd', explained_variance=0.8, norm_input_bits=2),
    'svd-0.9': dict(method='svd', explained_variance=0.9, norm_input_bits=None),
    'hosvd-0.7': dict(method='hosvd', explained_variance=0.7, norm_input_bits=None),
    'hosvd-0.9': dict(method='hosvd', explained_variance=0.9, norm_input_bits=None),
    # the region's BNs on running statistics: they keep nothing, but the forward changes
    'hosvd-0.8-frozen-bn': dict(method='hosvd', explained_variance=0.8, freeze_region_norm_stats=True),
    # the same, their statistics first re-estimated on 25 target batches (precise BN, half an epoch)
    'hosvd-0.8-precise-bn': dict(method='hosvd', explained_variance=0.8, freeze_region_norm_stats=True,
                                 precise_norm_batches=25),
    # the paper's decomposition of the raw input: the rows above keep the per-channel mean exactly
    'hosvd-0.8-uncentred': dict(method='hosvd', explained_variance=0.8, center=False, norm_input_bits=None),
    # channel and spatial bases estimated over the first 4 batches, then only projected onto (issue 14);
    # 4 = the step-time run's left-out first window, so its timed iterations all project
    'hosvd-0.8-frozen-subspace': dict(method='hosvd', explained_variance=0.8, subspace='frozen',
                                      subspace_batches=4),
    # each step's channel and spatial bases from one subspace iteration started at the last step's, ranks
    # still meeting eps every step; exact every 8th step (the hook's default)
    'hosvd-0.8-warm-subspace': dict(method='hosvd', explained_variance=0.8, subspace='warm'),
    # per-layer eps from 0.5-0.95 chosen on 2 batches at the start for the least weight-gradient error
    # within 1 MiB for the 10 convs' factors (what eps 0.8 keeps: about 0.9-1.4 MiB over these runs)
    'hosvd-budget-1mib': dict(method='hosvd', memory_budget_mib=1.0),
}
#: logged iterations whose time is left out of the step time: the first window holds the warm-up
WARMUP_LOGS = 1
#: the step-time runs: iterations, and the logging window (mmengine averages time over it)
TIMED_ITERS, TIME_WINDOW = 12, 4


def run(args, log, threads=None):
    """Run a repo tool with this Python from the repo root, output to ``log``, on ``threads`` CPU threads
    (default torch's); raise with the log's tail if it fails."""
    cmd = [sys.executable] + [str(a) for a in args]
    print('$', ' '.join(cmd[1:]), flush=True)
    os.makedirs(osp.dirname(log), exist_ok=True)
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, 'w') as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise RuntimeError(f'failed ({done.returncode}): {" ".join(cmd[1:])}\n'
                           + ''.join(open(log).readlines()[-30:]))


def scalars(work_dir):
    """The newest run's scalars.json under ``work_dir`` as a list of dicts (mmengine's vis_data)."""
    paths = sorted(glob.glob(osp.join(REPO, work_dir, '*', 'vis_data', 'scalars.json')))
    if not paths:
        raise FileNotFoundError(f'{work_dir}: no */vis_data/scalars.json (did the run validate?)')
    with open(paths[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


def val_curve(records):
    """``[(iteration, mIoU), ...]`` of a run's validations, in order."""
    return [(r['step'], r['mIoU']) for r in records if 'mIoU' in r]


def step_time(records):
    """Mean logged training iteration time (s) after the warm-up window; validation excluded."""
    times = [r['time'] for r in records if 'time' in r and 'mIoU' not in r][WARMUP_LOGS:]
    if not times:
        raise ValueError('no iteration time logged after the warm-up: run more iterations')
    return mean(times)


def last_checkpoint(work_dir):
    with open(osp.join(REPO, work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def region_bns_keep(overrides):
    """What the fine-tuned region's BNs keep for backward under a method's hook overrides."""
    import inspect
    from mmseg_actcomp.hooks import ActivationCompressionHook
    defaults = {k: p.default for k, p in inspect.signature(ActivationCompressionHook).parameters.items()}
    options = dict(defaults, **overrides)
    if options['method'] == 'none' or not options['lean_region']:
        return 'input whole'
    if options['freeze_region_norm_stats']:
        return 'nothing (running statistics)'
    bits = options['norm_input_bits']
    return 'input whole' if bits is None else f'input in {bits} bits'


def hook_options(overrides):
    return [f'custom_hooks.0.{k}={v}' for k, v in overrides.items()]


def finished(work_dir):
    """Whether ``work_dir`` holds a run that saved its last checkpoint after validating (``--resume``)."""
    try:
        return osp.isfile(last_checkpoint(work_dir)) and bool(val_curve(scalars(work_dir)))
    except (FileNotFoundError, ValueError):
        return False


def prepare_start(work, resume=False):
    """Stages 1 and 2; returns (calibrated checkpoint, its val mIoU on the target, source val mIoU)."""
    if not (resume and finished(f'{work}/start')):
        run(['tools/train.py', HEAD, '--work-dir', f'{work}/start'], osp.join(REPO, work, 'start.log'))
    if not (resume and finished(f'{work}/calibrate')):
        run(['tools/train.py', CALIB, '--work-dir', f'{work}/calibrate', '--cfg-options',
             f'load_from={last_checkpoint(f"{work}/start")}'], osp.join(REPO, work, 'calibrate.log'))
    calibrated = last_checkpoint(f'{work}/calibrate')
    return (calibrated, val_curve(scalars(f'{work}/calibrate'))[-1][1],
            val_curve(scalars(f'{work}/start'))[-1][1])


def run_record(run_dir):
    """What the summary needs of a finished run: val curve, work dir, mean kept energy (None if the
    run compressed nothing)."""
    records = scalars(run_dir)
    energy = [r['actcomp_kept_energy'] for r in records if 'actcomp_kept_energy' in r]
    return dict(curve=val_curve(records), run_dir=run_dir, kept_energy=mean(energy) if energy else None)


def finetune(work, key, seed, calibrated, iters, val_interval, threads=None, resume=False):
    """One fine-tuning run (reused with ``resume`` if it finished); returns its :func:`run_record`."""
    run_dir = f'{work}/{key}/seed{seed}'
    if not (resume and finished(run_dir) and val_curve(scalars(run_dir))[-1][0] == iters):
        run(['tools/train.py', FINETUNE, '--work-dir', run_dir, '--cfg-options', f'load_from={calibrated}',
             f'randomness.seed={seed}', f'train_cfg.max_iters={iters}',
             f'train_cfg.val_interval={val_interval}', f'default_hooks.checkpoint.interval={iters}']
            + hook_options(METHODS[key]), osp.join(REPO, f'{run_dir}.log'), threads)
    return run_record(run_dir)


def measure(work, key, run_dir, threads=None, resume=False):
    """Activation memory of a method's fine-tuning step on 3 real training batches (its memory.json,
    reused with ``resume`` if written)."""
    out = f'{work}/{key}/memory'
    if resume and osp.isfile(osp.join(REPO, out, 'memory.json')):
        with open(osp.join(REPO, out, 'memory.json')) as f:
            return json.load(f)
    run(['tools/measure_activation_memory.py', FINETUNE, '--checkpoint', last_checkpoint(run_dir),
         '--num-batches', '3', '--out-dir', out, '--log', run_dir, '--cfg-options']
        + hook_options(METHODS[key]), osp.join(REPO, f'{out}.log'), threads)
    with open(osp.join(REPO, out, 'memory.json')) as f:
        return json.load(f)


def time_steps(work, key, calibrated, iters=TIMED_ITERS):
    """Mean training iteration time (s) of a method, alone on the machine with all its threads: a short
    run of ``iters`` iterations logged every ``TIME_WINDOW``, the first window (warm-up) left out."""
    run_dir = f'{work}/timing/{key}'
    run(['tools/train.py', FINETUNE, '--work-dir', run_dir, '--cfg-options', f'load_from={calibrated}',
         f'train_cfg.max_iters={iters}', 'val_dataloader=None', 'val_cfg=None', 'val_evaluator=None',
         f'default_hooks.checkpoint.interval={iters + 1}', 'default_hooks.checkpoint.save_last=False',
         f'default_hooks.logger.interval={TIME_WINDOW}', f'log_processor.window_size={TIME_WINDOW}']
        + hook_options(METHODS[key]), osp.join(REPO, f'{run_dir}.log'))
    return step_time(scalars(run_dir))


def leave_one_out_spread(checkpoint, config=FINETUNE):
    """Largest change of val mIoU when one val image is left out, for ``checkpoint``: how much one image
    more or less moves the benchmark's figure. Returns (mIoU on all, max |change|, number of images)."""
    import numpy as np
    import torch
    from mmengine.config import Config
    from mmseg.apis import inference_model, init_model

    import mmseg_actcomp  # noqa: F401  (registers the plugin's types for the config)
    cfg = Config.fromfile(osp.join(REPO, config))
    cfg.custom_hooks = []
    model = init_model(cfg, osp.join(REPO, checkpoint), device='cpu')
    root = osp.join(REPO, cfg.val_dataloader.dataset.data_root)
    names = open(osp.join(root, 'ImageSets', 'Segmentation', 'val.txt')).read().split()
    num_classes = model.decode_head.num_classes
    inter, union = np.zeros((len(names), num_classes)), np.zeros((len(names), num_classes))
    from PIL import Image
    with torch.no_grad():
        for i, name in enumerate(names):
            pred = inference_model(model, osp.join(root, 'JPEGImages', name + '.jpg'))
            pred = pred.pred_sem_seg.data[0].numpy()
            label = np.asarray(Image.open(osp.join(root, 'SegmentationClass', name + '.png')))
            valid = label != 255
            p, t = pred[valid], label[valid]
            area_p = np.bincount(p, minlength=num_classes)[:num_classes]
            area_t = np.bincount(t, minlength=num_classes)[:num_classes]
            inter[i] = np.bincount(p[p == t], minlength=num_classes)[:num_classes]
            union[i] = area_p + area_t - inter[i]

    def miou(i_sum, u_sum):  # mmseg's mIoU: mean over classes present (union > 0), in percent
        present = u_sum > 0
        return 100 * float(np.mean(i_sum[present] / u_sum[present]))

    total = miou(inter.sum(0), union.sum(0))
    spread = max(abs(miou(inter.sum(0) - inter[i], union.sum(0) - union[i]) - total)
                 for i in range(len(names)))
    return total, spread, len(names)


def finetune_settings():
    """Batch size, crop and learning rate of the fine-tuning config, as the runs use them."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, FINETUNE))
    return dict(batch_size=cfg.train_dataloader.batch_size, crop='x'.join(map(str, cfg.crop_size)),
                lr=cfg.optim_wrapper.optimizer.lr)


def summarise(runs, start_miou, step_s, vanilla_key='none'):
    """Per method: gain over the calibrated start (mean, population std over seeds), end mIoU, step time
    and its ratio to vanilla's. ``runs[key][seed] = {'curve': [(it, miou), ...]}``, ``step_s[key]`` in s."""
    out = {}
    for key, by_seed in runs.items():
        by_seed = dict(sorted(by_seed.items()))
        ends = [r['curve'][-1][1] for r in by_seed.values()]
        gains = [e - start_miou for e in ends]
        energies = [r['kept_energy'] for r in by_seed.values() if r.get('kept_energy') is not None]
        out[key] = dict(miou_start=start_miou, miou_end=mean(ends), gain_mean=mean(gains),
                        gain_std=pstdev(gains), step_s=step_s[key],
                        kept_energy=mean(energies) if energies else None,
                        step_ratio=step_s[key] / step_s[vanilla_key],
                        seeds=[dict(seed=s, miou_end=r['curve'][-1][1], gain=r['curve'][-1][1] - start_miou,
                                    curve=r['curve']) for s, r in by_seed.items()])
    vanilla_gain = out.get(vanilla_key, {}).get('gain_mean')
    for row in out.values():
        row['gain_pct_of_vanilla'] = (100 * row['gain_mean'] / vanilla_gain) if vanilla_gain else None
    return out


def plot_curves(methods, path):
    """Val mIoU against iteration: the mean over seeds per method, with the min-max band of the seeds."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, row in methods.items():
        curves = [s['curve'] for s in row['seeds']]
        its = [0] + [it for it, _ in curves[0]]
        values = [[row['miou_start']] + [m for _, m in c] for c in curves]
        mid = [mean(v) for v in zip(*values)]
        line, = ax.plot(its, mid, marker='o', markersize=3, label=key)
        ax.fill_between(its, [min(v) for v in zip(*values)], [max(v) for v in zip(*values)],
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel('fine-tuning iteration')
    ax.set_ylabel('target val mIoU')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result, command):
    m = result['methods']
    lines = ['# Fine-tuning learns: gain over the calibrated start, memory and step time per method', '',
             f'Written by `{command}` ({result["wall_s"] / 60:.0f} min on this machine'
             f'{", reusing the runs and memory reports an earlier invocation finished" if result["resumed"] else ""}); '
             f'figures in `{result["json"]}`. Do not edit: rerun the command.', '',
             '| method | region BNs keep | mIoU start | mIoU end | gain (mean ± std) | gain % of vanilla '
             '| region MiB | region vs vanilla | step time vs vanilla | input energy kept |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    vanilla_mib = m.get('none', {}).get('region_mib')
    for key, row in m.items():
        pct, ratio, energy = row['gain_pct_of_vanilla'], row['step_ratio'], row['kept_energy']
        less = f'{vanilla_mib / row["region_mib"]:.1f}x less' if vanilla_mib and key != 'none' else ''
        lines.append(f'| {key} | {row["region_bns_keep"]} | {row["miou_start"]:.2f} | {row["miou_end"]:.2f} | '
                     f'{row["gain_mean"]:+.2f} ± {row["gain_std"]:.2f} | '
                     f'{"" if pct is None else f"{pct:.0f} %"} | {row["region_mib"]:.2f} | {less} | '
                     f'{"" if ratio is None else f"{ratio:.2f}x"} | '
                     f'{"" if energy is None else f"{100 * energy:.1f} %"} |')
    p = result['protocol']
    lines += ['', f'Seeds {p["seeds"]}; each seed fixes the data order and augmentation, the same for every '
              f'method. {p["iters"]} iterations of batch {p["batch_size"]} at {p["crop"]} per run, SGD lr '
              f'{p["lr"]:g} with a 10-iteration warm-up and a cosine decay, val every {p["val_interval"]} '
              f'iterations on {p["val_images"]} target images; {p["jobs"]} runs side by side. Region MiB: what '
              'autograd keeps for backward in the fine-tuned region, measured by '
              '`tools/measure_activation_memory.py` on 3 training batches after the first seed\'s run. Step '
              f'time: mean iteration time of a {TIMED_ITERS}-iteration run per method, alone on the machine, '
              f'the first {TIME_WINDOW} left out; vanilla {m["none"]["step_s"]:.2f} s. Input energy kept: '
              '||x_hat||^2 / ||x||^2 of what the compressed convs keep for the weight gradient, the mean over '
              'layers and logged iterations (`actcomp_kept_energy` in the training logs). The compressed '
              'methods keep their inputs\' per-channel means exactly and decompose the rest (the hook\'s '
              'default `center=True`); `-uncentred` is the paper\'s decomposition of the raw input.',
              '', ('' if p['source_miou'] is None else f'Start: the decode head trained on the source task '
                   f'reaches {p["source_miou"]:.2f} mIoU on the source val split; ')
              + f'conv_seg calibrated on the target gives {p["start_miou"]:.2f}. One val '
              f'image more or less moves the mIoU of vanilla seed {p["seeds"][0]} by at most '
              f'{p["val_loo_max_delta"]:.2f} points ({p["val_loo_miou"]:.2f} on all images).',
              '', 'What stands in for what: source task = the paper\'s Cityscapes pre-training (other classes, '
              'other scenes: the eight ARC 2017 objects on real photos); target task = Pascal VOC (the VOC '
              'photo\'s bottle, person and dining-table cut-outs on real photos, VOC labels); '
              '`tools/make_sample_voc.py --data finetune` writes both.', '',
              '## Ranks per layer', '', 'HOSVD ranks (batch, channel, height, width; the largest over the '
              'measured batches) and SVD ranks (batch), per method, on the first seed\'s trained weights; a centred '
              'method\'s ranks count the mean as one component:', '']
    ranked = [k for k in m if k != 'none']
    lines += ['| layer | ' + ' | '.join(ranked) + ' |', '| --- |' + ' --- |' * len(ranked)]
    for layer in m[ranked[0]]['ranks'] if ranked else []:
        lines.append(f'| {layer} | ' + ' | '.join('x'.join(map(str, m[k]['ranks'].get(layer) or ['-']))
                                               for k in ranked) + ' |')
    lines += ['', f'![val mIoU per iteration]({osp.basename(result["curves"])})',
              f'![memory against mIoU]({osp.basename(result["pareto"])})']
    return '\n'.join(lines) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--iters', type=int, default=100, help='fine-tuning iterations per run')
    p.add_argument('--val-interval', type=int, default=50)
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    p.add_argument('--work-dir', default='work_dirs/finetune')
    p.add_argument('--out', default='docs/finetune', help='writes OUT.md, OUT.json, OUT_curves.png, '
                                                         'OUT_pareto.png')
    p.add_argument('--calibrated', help='start from this calibrated checkpoint instead of making one')
    p.add_argument('--jobs', type=int, default=2, help='learning runs side by side (default 2)')
    p.add_argument('--resume', action='store_true',
                   help='reuse the finished runs and memory reports in --work-dir (an interrupted benchmark '
                        'goes on where it stopped); step times are always measured anew')
    args = p.parse_args(argv)
    if args.iters < 1 or args.val_interval < 1 or args.iters % args.val_interval:
        p.error(f'--iters ({args.iters}) must be a positive multiple of --val-interval ({args.val_interval})')
    if args.jobs < 1:
        p.error(f'--jobs must be >= 1, got {args.jobs}')
    if 'none' not in args.methods:
        p.error(f'--methods must include none (vanilla), the yardstick of every gain; got {args.methods}')
    if not osp.isdir(osp.join(REPO, DATA)):
        sys.exit(f'{DATA} is missing: write it with `{DATA_COMMAND}` (about 10 s)')
    from mmseg_actcomp.memory.pareto import plot_pareto, report_memory_mib
    start = time.time()
    work = args.work_dir
    if args.calibrated:
        calibrated = args.calibrated
        start_miou = val_curve(scalars(osp.dirname(calibrated)))[-1][1]
        source_miou = None  # the start was made elsewhere
    else:
        calibrated, start_miou, source_miou = prepare_start(work, args.resume)
    # The learning runs share the cores, `--jobs` at a time with cores / jobs threads each (the eigen-
    # solvers are single-threaded, so two runs side by side use the machine better); their iteration
    # times are therefore not compared. Step times come from short runs afterwards, alone.
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [(key, seed) for seed in args.seeds for key in args.methods]
    runs, memory = {key: {} for key in args.methods}, {}
    with ThreadPoolExecutor(args.jobs) as pool:
        done = {pool.submit(finetune, work, key, seed, calibrated, args.iters, args.val_interval,
                            threads, args.resume): (key, seed) for key, seed in jobs}
        for future in as_completed(done):
            key, seed = done[future]
            runs[key][seed] = future.result()
        measured = {pool.submit(measure, work, key, runs[key][args.seeds[0]]['run_dir'], threads, args.resume): key
                    for key in args.methods}
        for future in as_completed(measured):
            memory[measured[future]] = future.result()
    step_s = {key: time_steps(work, key, calibrated) for key in args.methods}
    methods = summarise(runs, start_miou, step_s)
    for key, row in methods.items():
        row['region_mib'] = report_memory_mib(memory[key], 'region')
        row['ranks'] = {layer['path']: layer['ranks'] for layer in memory[key]['layers']}
        row['region_bns_keep'] = region_bns_keep(METHODS[key])
    loo_miou, loo_delta, val_images = leave_one_out_spread(
        last_checkpoint(f'{work}/none/seed{args.seeds[0]}'))
    out = args.out
    os.makedirs(osp.dirname(osp.join(REPO, out)) or '.', exist_ok=True)
    result = dict(
        command='python benchmarks/finetune.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
        json=f'{out}.json', curves=f'{out}_curves.png', pareto=f'{out}_pareto.png',
        protocol=dict(seeds=args.seeds, iters=args.iters, val_interval=args.val_interval, jobs=args.jobs,
                      **finetune_settings(),
                      val_images=val_images, start_miou=start_miou, source_miou=source_miou,
                      val_loo_miou=loo_miou, val_loo_max_delta=loo_delta,
                      model='DeepLabV3-MobileNetV2-d8, ImageNet backbone, the paper\'s 10 layers',
                      configs=dict(start=HEAD, calibrate=CALIB, finetune=FINETUNE)),
        methods=methods, wall_s=time.time() - start, resumed=args.resume)
    plot_curves(methods, osp.join(REPO, result['curves']))
    keys = list(methods)
    plot_pareto([(methods[k]['region_mib'], methods[k]['miou_end']) for k in keys], keys,
                osp.join(REPO, result['pareto']), xlabel='measured memory of the fine-tuned region (MiB)')
    result['command'] = result['command'].strip()
    with open(osp.join(REPO, result['json']), 'w') as f:
        json.dump(result, f, indent=1)
    text = markdown(result, result['command'])
    with open(osp.join(REPO, f'{out}.md'), 'w') as f:
        f.write(text)
    print(text)


if __name__ == '__main__':
    main()
