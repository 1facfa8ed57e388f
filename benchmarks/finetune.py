"""Does compressed fine-tuning learn, and does it beat what a user can do without it? mIoU gain, memory and
step time per method, over seeds, on the learning benchmark's real-pixel data.

The protocol mirrors the paper's (Cityscapes-trained start, conv_seg calibrated on VOC, then the last
layers fine-tuned on VOC), scaled to a CPU:

1. start: the decode head of DeepLabV3-MobileNetV2-d8 trained on the *source* task (ARC 2017 objects on
   real backgrounds, other classes) on the frozen ImageNet backbone;
2. calibration: only conv_seg trained on the *target* task (the real VOC photo's objects on real
   backgrounds, VOC labels), from the start;
3. fine-tuning from the calibrated checkpoint, once per method and seed; the seed sets the data order and
   augmentation, the same for every method. The methods (:data:`METHODS`): vanilla fine-tuning of the
   paper's 10 layers and of the last 1 ... all layers, the hook's default over the same depths, HOSVD by
   explained variance, Gradient Filter by patch size, SVD, the ablations of earlier issues, and the
   diagnosis rows (learning rate, a longer schedule). PSPNet-MobileNetV2-d8 repeats stages 1-3 for
   vanilla and the default (:data:`PSPNET_METHODS`).

Every stage is a run of the user-facing tools/train.py with the configs in configs/finetune/, and each
method's activation memory is measured by tools/measure_activation_memory.py, so the figures are what a
user gets. Writes, in one go, OUT.md (the tables), OUT.json, OUT_curves.png (val mIoU against iteration,
mean and seed band per method) and OUT_pareto.png (region memory against gain, one front per family)::

    python benchmarks/finetune.py [--seeds 0 1 2] [--iters 100] [--val-interval 100] [--jobs 2]
        [--work-dir work_dirs/finetune] [--out docs/finetune] [--methods none hosvd-0.8 ...]
        [--models deeplabv3 pspnet] [--resume] [--retime]

With ``--resume`` every run, memory report and step time already in the work dir is reused, and the page
holds every method finished there: ``--resume --methods KEY ...`` adds rows to the page.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from statistics import mean, pstdev
from typing import Dict, List, NamedTuple, Optional, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join('configs', 'finetune')
DATA = 'data/finetune_voc'
DATA_COMMAND = f'python tools/make_sample_voc.py --data finetune --out {DATA}'


class Model(NamedTuple):
    """A network of the benchmark: its stage configs and where its runs go under ``--work-dir``."""
    name: str
    head: str  # stage 1: the decode head trained on the source task
    calib: str  # stage 2: conv_seg calibrated on the target task
    finetune: str  # stage 3: its hook entry fine-tunes the paper's 10 layers; each method overrides it
    subdir: str  # '' for the main model (its runs at the top of the work dir)


MODELS = {
    'deeplabv3': Model('DeepLabV3-MobileNetV2-d8',
                       osp.join(CONFIGS, 'deeplabv3_mv2-d8_head-source_1xb8-150it_vocfinetune-128x128.py'),
                       osp.join(CONFIGS, 'deeplabv3_mv2-d8_calib-conv_seg_1xb8-100it_vocfinetune-128x128.py'),
                       osp.join(CONFIGS, 'deeplabv3_mv2-d8_hosvd-0.8-10L_1xb8-100it_vocfinetune-128x128.py'),
                       ''),
    'pspnet': Model('PSPNet-MobileNetV2-d8',
                    osp.join(CONFIGS, 'pspnet_mv2-d8_head-source_1xb8-150it_vocfinetune-128x128.py'),
                    osp.join(CONFIGS, 'pspnet_mv2-d8_calib-conv_seg_1xb8-100it_vocfinetune-128x128.py'),
                    osp.join(CONFIGS, 'pspnet_mv2-d8_none-10L_1xb8-100it_vocfinetune-128x128.py'),
                    'pspnet'),
}
#: ``num_layers`` of the rows that fine-tune every conv the inference forward runs (counted per model)
ALL = 'all'


class Method(NamedTuple):
    """A row: how it differs from the fine-tuning config, and where the page shows it.

    ``hook``: overrides of the config's hook entry. With ``defaults`` every other hook key is set to the
    hook's own default (:func:`hook_defaults`): the row is what a bare ``ActivationCompressionHook`` line
    with these keys does. ``family``: the Pareto front it belongs to (None: an ablation, a point alone).
    ``lr_scale``: times the config's learning rate. ``seeds`` / ``iters`` / ``val_interval``: instead of
    ``--seeds`` / ``--iters`` / ``--val-interval`` (the longer schedule; fewer seeds for the earlier issues'
    ablations, which the tables then say). Rows that change the rate or the schedule are diagnosis rows,
    apart from the main table."""
    hook: dict
    family: Optional[str] = None
    defaults: bool = False
    lr_scale: float = 1.0
    seeds: Optional[Tuple[int, ...]] = None
    iters: Optional[int] = None
    val_interval: Optional[int] = None

    def cfg(self, model: 'Model') -> List[str]:
        """The ``--cfg-options`` of the row besides the hook's: the scaled learning rate."""
        if self.lr_scale == 1.0:
            return []
        return [f'optim_wrapper.optimizer.lr={finetune_settings(model.finetune)["lr"] * self.lr_scale:g}']


#: The hook's defaults up to issue 22: the paper's HOSVD (all four modes truncated at eps 0.8), region BNs on
#: batch statistics in 4 bits. The rows of earlier issues spell them out, so they measure the same setting
#: whatever the defaults become.
BEFORE = dict(method='hosvd', explained_variance=0.8, norm_input_bits=4, truncate_batch=True)
#: the layer counts of the depth sweep (the last N traced convs; ALL: every one)
DEPTHS = (1, 2, 5, 10, 20, ALL)
#: family -> its label on the Pareto plot, in the order the legend lists them
FAMILIES = {'vanilla': 'vanilla, by depth', 'default': 'the default, by depth', 'hosvd': 'HOSVD, by eps',
            'hosvd-whole-batch': 'HOSVD, batch mode whole, by eps',
            'gradfilt': 'Gradient Filter, by patch', 'svd': 'SVD'}


def depth_key(prefix: str, depth) -> str:
    return f'{prefix}-{depth}' if depth == ALL else f'{prefix}-{depth}L'


def _hosvd(**options) -> dict:
    return dict(BEFORE, **options)


#: the seeds of the earlier issues' ablations (BN bits and modes, eps, SVD, centring, subspaces, budget),
#: rerun on issue 22's calibrated start: two, not three, because their 36 runs of about 6 minutes (two side
#: by side on 2 cores) did not fit beside the issue's own rows; the tables say "2 seeds" on them
ABLATION_SEEDS = (0, 1)


def _ablation(hook: dict, family: Optional[str] = None) -> Method:
    return Method(hook, family, seeds=ABLATION_SEEDS)


#: method key -> :class:`Method`. ``none`` and the methods without ``num_layers`` fine-tune the paper's 10
#: layers (the config's ``layers``); the depth rows the last N traced convs (``layers=None``).
METHODS: Dict[str, Method] = {
    'none': Method(dict(method='none'), 'vanilla'),
    'hosvd-0.8': Method(_hosvd(), 'hosvd'),
    # the region's BNs on batch statistics keep their input whole (exact), or in 8 or 2 bits
    'hosvd-0.8-exact-bn': _ablation(_hosvd(norm_input_bits=None)),
    'hosvd-0.8-bn8': _ablation(_hosvd(norm_input_bits=8)),
    'hosvd-0.8-bn2': _ablation(_hosvd(norm_input_bits=2)),
    'svd-0.9': _ablation(dict(method='svd', explained_variance=0.9, norm_input_bits=None), 'svd'),
    # the explained-variance ablation of issue 7, region BNs kept whole
    'hosvd-0.7': _ablation(_hosvd(explained_variance=0.7, norm_input_bits=None)),
    'hosvd-0.9': _ablation(_hosvd(explained_variance=0.9, norm_input_bits=None)),
    # the region's BNs on running statistics: they keep nothing, but the forward changes
    'hosvd-0.8-frozen-bn': _ablation(_hosvd(freeze_region_norm_stats=True)),
    # the same, their statistics first re-estimated on 25 target batches (precise BN, half an epoch)
    'hosvd-0.8-precise-bn': _ablation(_hosvd(freeze_region_norm_stats=True, precise_norm_batches=25)),
    # the paper's decomposition of the raw input: the other rows keep the per-channel mean exactly
    'hosvd-0.8-uncentred': _ablation(_hosvd(center=False, norm_input_bits=None)),
    # channel and spatial bases estimated over the first 4 batches, then only projected onto (issue 14);
    # 4 = the step-time run's left-out first window, so its timed iterations all project
    'hosvd-0.8-frozen-subspace': _ablation(_hosvd(subspace='frozen', subspace_batches=4)),
    # each step's channel and spatial bases from one subspace iteration started at the last step's
    'hosvd-0.8-warm-subspace': _ablation(_hosvd(subspace='warm')),
    # per-layer eps from 0.5-0.95 chosen on 2 batches at the start for the least weight-gradient error
    # within 1 MiB for the 10 convs' factors
    'hosvd-budget-1mib': _ablation(_hosvd(memory_budget_mib=1.0)),
    # issue 22: HOSVD by eps with the 4-bit BNs, Gradient Filter by patch size, the depth sweeps
    'hosvd-0.9-bn4': Method(_hosvd(explained_variance=0.9), 'hosvd'),
    'hosvd-0.95-bn4': Method(_hosvd(explained_variance=0.95), 'hosvd'),
    # Gradient Filter with the default's lean region (its BNs' bits: what the default keeps around its convs)
    'gradfilt-r2': Method(dict(method='gradfilt', patch_size=2), 'gradfilt'),
    'gradfilt-r4': Method(dict(method='gradfilt', patch_size=4), 'gradfilt'),
    # the batch mode kept whole (truncate_batch=False): each sample keeps its own coordinates
    'hosvd-0.8-whole-batch': Method(_hosvd(truncate_batch=False), 'hosvd-whole-batch'),
    'hosvd-0.85-whole-batch-bn2': Method(_hosvd(explained_variance=0.85, truncate_batch=False, norm_input_bits=2),
                                         'hosvd-whole-batch'),
    'hosvd-0.9-whole-batch-bn2': Method(_hosvd(explained_variance=0.9, truncate_batch=False, norm_input_bits=2),
                                        'hosvd-whole-batch'),
    **{depth_key('none', n): Method(dict(method='none', layers=None, num_layers=n), 'vanilla') for n in DEPTHS},
    **{depth_key('default', n): Method(dict(layers=None, num_layers=n), 'default', defaults=True)
       for n in DEPTHS},
    # diagnosis: is the paper's setting short of gradient? (truncation shortens the weight gradients)
    'hosvd-0.8-lr1.5x': Method(_hosvd(), lr_scale=1.5),
    'hosvd-0.8-lr2x': Method(_hosvd(), lr_scale=2.0),
    # diagnosis: does the gap close or widen with three times the schedule? (one seed)
    'none-300it': Method(dict(method='none'), seeds=(0,), iters=300, val_interval=50),
    'hosvd-0.8-300it': Method(_hosvd(), seeds=(0,), iters=300, val_interval=50),
}
#: the rows of the second model: vanilla on the paper's layers and the default on the last 10
PSPNET_METHODS = ('none', 'default-10L')
#: logged iterations whose time is left out of the step time: the first window holds the warm-up
WARMUP_LOGS = 1
#: the step-time runs: iterations, and the logging window (mmengine averages time over it)
TIMED_ITERS, TIME_WINDOW = 12, 4


def hook_defaults() -> dict:
    """The keyword defaults of ``ActivationCompressionHook``: what a bare hook line does."""
    from mmseg_actcomp.hooks import default_options
    return default_options()


def hook_overrides(method: Method, num_convs: Optional[int] = None) -> dict:
    """The hook keys a run sets: ``method.hook`` (on the hook's defaults for a ``defaults`` row), with
    ``num_layers=ALL`` replaced by ``num_convs``, the model's count."""
    options = dict(hook_defaults(), require_load_from=True) if method.defaults else {}
    options.update(method.hook)
    if options.get('num_layers') == ALL:
        if num_convs is None:
            raise ValueError('num_layers=ALL needs the model\'s conv count')
        options['num_layers'] = num_convs
    return options


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


def _newest(work_dir: str, pattern: str) -> str:
    paths = sorted(glob.glob(osp.join(REPO, work_dir, '*', pattern)))
    if not paths:
        raise FileNotFoundError(f'{work_dir}: no */{pattern} (did the run validate?)')
    return paths[-1]


def scalars(work_dir):
    """The newest run's scalars.json under ``work_dir`` as a list of dicts (mmengine's vis_data)."""
    with open(_newest(work_dir, osp.join('vis_data', 'scalars.json'))) as f:
        return [json.loads(line) for line in f if line.strip()]


_CLASS_ROW = re.compile(r'^\|\s*(\S+)\s*\|\s*(nan|[-0-9.]+)\s*\|\s*(nan|[-0-9.]+)\s*\|\s*$')


def class_ious(log_text: str) -> Dict[str, float]:
    """Class -> IoU (%) of the last ``per class results`` table mmseg's IoUMetric printed in a log;
    classes absent from the val split (``nan``) left out."""
    start = log_text.rfind('per class results:')
    if start < 0:
        raise ValueError('no "per class results" table in the log (did the run validate?)')
    table = {}
    for line in log_text[start:].splitlines()[1:]:
        match = _CLASS_ROW.match(line.strip())
        if match and match.group(1) != 'Class':
            if match.group(2) != 'nan':
                table[match.group(1)] = float(match.group(2))
        elif table and not line.startswith(('+', '|')):
            break
    return table


def run_class_ious(work_dir: str) -> Dict[str, float]:
    """:func:`class_ious` of the newest mmengine log under ``work_dir``: its last validation's."""
    with open(_newest(work_dir, '*.log'), errors='replace') as f:
        return class_ious(f.read())


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
    """What the fine-tuned region's BNs keep for backward under a method's hook keys."""
    options = dict(hook_defaults(), **overrides)
    if options['method'] == 'none' or not options['lean_region']:
        return 'input whole'
    if options['freeze_region_norm_stats']:
        return 'nothing (running statistics)'
    bits = options['norm_input_bits']
    return 'input whole' if bits is None else f'input in {bits} bits'


def cfg_options(options: dict, prefix: str = '') -> List[str]:
    """``--cfg-options`` arguments ``prefix + key=value`` (DictAction reads None, True, lists back)."""
    def text(value):
        return f'[{",".join(repr(v) for v in value)}]' if isinstance(value, (list, tuple)) else str(value)
    return [f'{prefix}{k}={text(v)}' for k, v in options.items()]


def finished(work_dir, iters=None):
    """Whether ``work_dir`` holds a run that saved its last checkpoint after validating (at ``iters``)."""
    try:
        curve = val_curve(scalars(work_dir))
        return osp.isfile(last_checkpoint(work_dir)) and bool(curve) and (iters is None or curve[-1][0] == iters)
    except (FileNotFoundError, ValueError):
        return False


def model_work(work: str, model: Model) -> str:
    return osp.join(work, model.subdir) if model.subdir else work


def prepare_start(work, model: Model = MODELS['deeplabv3'], resume=False):
    """Stages 1 and 2; returns (calibrated checkpoint, its val mIoU on the target, source val mIoU, the
    calibrated start's class IoUs)."""
    work = model_work(work, model)
    if not (resume and finished(f'{work}/start')):
        run(['tools/train.py', model.head, '--work-dir', f'{work}/start'], osp.join(REPO, work, 'start.log'))
    if not (resume and finished(f'{work}/calibrate')):
        run(['tools/train.py', model.calib, '--work-dir', f'{work}/calibrate', '--cfg-options',
             f'load_from={last_checkpoint(f"{work}/start")}'], osp.join(REPO, work, 'calibrate.log'))
    calibrated = last_checkpoint(f'{work}/calibrate')
    return (calibrated, val_curve(scalars(f'{work}/calibrate'))[-1][1], val_curve(scalars(f'{work}/start'))[-1][1],
            run_class_ious(f'{work}/calibrate'))


def run_record(run_dir):
    """What the summary needs of a finished run: val curve, work dir, mean kept energy (None if the run
    compressed nothing), the last validation's class IoUs, and the run's wall time (None if unknown)."""
    records = scalars(run_dir)
    energy = [r['actcomp_kept_energy'] for r in records if 'actcomp_kept_energy' in r]
    return dict(curve=val_curve(records), run_dir=run_dir, kept_energy=mean(energy) if energy else None,
                class_iou=run_class_ious(run_dir), wall_s=run_wall_s(run_dir))


def run_wall_s(work_dir: str) -> float:
    """Wall time (s) of the newest run in ``work_dir``: from the start mmengine names its folder by
    (``YYYYmmdd_HHMMSS``) to the last write of its scalars."""
    path = _newest(work_dir, osp.join('vis_data', 'scalars.json'))
    started = time.mktime(time.strptime(osp.basename(osp.dirname(osp.dirname(path))), '%Y%m%d_%H%M%S'))
    return osp.getmtime(path) - started


def finetune(work, model: Model, key, seed, calibrated, iters, val_interval, num_convs, threads=None,
             resume=False):
    """One fine-tuning run (reused with ``resume`` if it finished); returns its :func:`run_record`."""
    method = METHODS[key]
    iters, val_interval = method.iters or iters, method.val_interval or val_interval
    run_dir = f'{model_work(work, model)}/{key}/seed{seed}'
    if not (resume and finished(run_dir, iters)):
        run(['tools/train.py', model.finetune, '--work-dir', run_dir, '--cfg-options', f'load_from={calibrated}',
             f'randomness.seed={seed}', f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={val_interval}',
             f'default_hooks.checkpoint.interval={iters}'] + method.cfg(model)
            + cfg_options(hook_overrides(method, num_convs), 'custom_hooks.0.'),
            osp.join(REPO, f'{run_dir}.log'), threads)
    return run_record(run_dir)


def measure(work, model: Model, key, run_dir, num_convs, threads=None, resume=False):
    """Activation memory of a method's fine-tuning step on 3 real training batches (its memory.json,
    reused with ``resume`` if written)."""
    out = f'{model_work(work, model)}/{key}/memory'
    if not (resume and osp.isfile(osp.join(REPO, out, 'memory.json'))):
        run(['tools/measure_activation_memory.py', model.finetune, '--checkpoint', last_checkpoint(run_dir),
             '--num-batches', '3', '--out-dir', out, '--log', run_dir, '--cfg-options']
            + cfg_options(hook_overrides(METHODS[key], num_convs), 'custom_hooks.0.'),
            osp.join(REPO, f'{out}.log'), threads)
    with open(osp.join(REPO, out, 'memory.json')) as f:
        return json.load(f)


def time_steps(work, model: Model, key, calibrated, num_convs, resume=False, iters=TIMED_ITERS):
    """Mean training iteration time (s) of a method, alone on the machine with all its threads: a short
    run of ``iters`` iterations logged every ``TIME_WINDOW``, the first window (warm-up) left out. Reused
    with ``resume`` if measured (``timing/KEY/step.json``)."""
    run_dir = f'{model_work(work, model)}/timing/{key}'
    cached = osp.join(REPO, run_dir, 'step.json')
    if resume and osp.isfile(cached):
        return json.load(open(cached))['step_s']
    method = METHODS[key]
    run(['tools/train.py', model.finetune, '--work-dir', run_dir, '--cfg-options', f'load_from={calibrated}',
         f'train_cfg.max_iters={iters}', 'val_dataloader=None', 'val_cfg=None', 'val_evaluator=None',
         f'default_hooks.checkpoint.interval={iters + 1}', 'default_hooks.checkpoint.save_last=False',
         f'default_hooks.logger.interval={TIME_WINDOW}', f'log_processor.window_size={TIME_WINDOW}']
        + method.cfg(model) + cfg_options(hook_overrides(method, num_convs), 'custom_hooks.0.'),
        osp.join(REPO, f'{run_dir}.log'))
    step_s = step_time(scalars(run_dir))
    with open(cached, 'w') as f:
        json.dump(dict(step_s=step_s, measured=time.strftime('%Y-%m-%d %H:%M')), f)
    return step_s


def conv_count(config: str) -> int:
    """How many layers ``num_layers`` can choose in the config's model (its convs and linear layers; the
    benchmark's CNNs have convs only): the ``num_layers`` of ALL."""
    from mmseg_actcomp.apis.segmentor import build_segmentor, load_config
    from mmseg_actcomp.ops.region import trainable_inference_layers
    return len(trainable_inference_layers(build_segmentor(load_config(osp.join(REPO, config)))))


def val_class_pixels(config: str) -> Dict[str, int]:
    """Class -> labelled pixels in the config's val split (255 ignored): how rare each class is."""
    import numpy as np
    from mmengine.config import Config
    from PIL import Image
    cfg = Config.fromfile(osp.join(REPO, config))
    dataset = cfg.val_dataloader.dataset
    root = osp.join(REPO, dataset.data_root)
    split = osp.join(root, dataset.ann_file)
    counts = np.zeros(256, dtype=np.int64)
    for name in open(split).read().split():
        label = np.asarray(Image.open(osp.join(root, dataset.data_prefix.seg_map_path, name + '.png')))
        counts += np.bincount(label.ravel(), minlength=256)
    from mmseg.datasets import PascalVOCDataset
    classes = PascalVOCDataset.METAINFO['classes']
    return {c: int(counts[i]) for i, c in enumerate(classes) if counts[i]}


def leave_one_out_spread(checkpoint, config=MODELS['deeplabv3'].finetune):
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


def finetune_settings(config=MODELS['deeplabv3'].finetune):
    """Batch size, crop and learning rate of the fine-tuning config, as the runs use them."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, config))
    return dict(batch_size=cfg.train_dataloader.batch_size, crop='x'.join(map(str, cfg.crop_size)),
                lr=cfg.optim_wrapper.optimizer.lr)


def summarise(runs, start_miou, step_s, vanilla_key='none', start_class_iou=None):
    """Per method: gain over the calibrated start (mean, population std over seeds), end mIoU, step time
    and its ratio to vanilla's, and each class's IoU gain (mean over seeds) where the runs recorded them.
    ``runs[key][seed] = {'curve': [(it, miou), ...], ...}``, ``step_s[key]`` in s (None: not timed)."""
    out = {}
    for key, by_seed in runs.items():
        by_seed = dict(sorted(by_seed.items()))
        ends = [r['curve'][-1][1] for r in by_seed.values()]
        gains = [e - start_miou for e in ends]
        energies = [r['kept_energy'] for r in by_seed.values() if r.get('kept_energy') is not None]
        step = step_s.get(key)
        out[key] = dict(miou_start=start_miou, miou_end=mean(ends), gain_mean=mean(gains),
                        gain_std=pstdev(gains), step_s=step, kept_energy=mean(energies) if energies else None,
                        step_ratio=None if step is None or step_s.get(vanilla_key) is None
                        else step / step_s[vanilla_key],
                        seeds=[dict(seed=s, miou_end=r['curve'][-1][1], gain=r['curve'][-1][1] - start_miou,
                                    curve=r['curve'], class_iou=r.get('class_iou'), wall_s=r.get('wall_s'))
                               for s, r in by_seed.items()])
        if start_class_iou and all(r.get('class_iou') for r in by_seed.values()):
            out[key]['class_gain'] = {c: mean(r['class_iou'].get(c, 0.0) - iou for r in by_seed.values())
                                      for c, iou in start_class_iou.items()}
    vanilla_gain = out.get(vanilla_key, {}).get('gain_mean')
    for row in out.values():
        row['gain_pct_of_vanilla'] = (100 * row['gain_mean'] / vanilla_gain) if vanilla_gain else None
    return out


def plot_curves(methods, path):
    """Val mIoU against iteration: the mean over seeds per method, with the min-max band of the seeds."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6))
    for key, row in methods.items():
        curves = [s['curve'] for s in row['seeds']]
        its = [0] + [it for it, _ in curves[0]]
        values = [[row['miou_start']] + [m for _, m in c] for c in curves]
        mid = [mean(v) for v in zip(*values)]
        line, = ax.plot(its, mid, marker='o', markersize=3, label=key)
        ax.fill_between(its, [min(v) for v in zip(*values)], [max(v) for v in zip(*values)],
                        color=line.get_color(), alpha=0.1)
    ax.set_xlabel('fine-tuning iteration')
    ax.set_ylabel('target val mIoU')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_families(methods, path, default_key='default-10L'):
    """Region memory (log axis) against gain: each family's rows joined in memory order, the ablations as
    grey points, the default circled, every point labelled."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 6.5))
    for family, label in FAMILIES.items():
        rows = sorted(((row['region_mib'], row['gain_mean'], key) for key, row in methods.items()
                       if METHODS[key].family == family), key=lambda r: r[0])
        if rows:
            line, = ax.plot([r[0] for r in rows], [r[1] for r in rows], marker='o', label=label)
            ax.errorbar([r[0] for r in rows], [r[1] for r in rows], [methods[r[2]]['gain_std'] for r in rows],
                        fmt='none', ecolor=line.get_color(), alpha=0.35, capsize=2)
    others = [(row['region_mib'], row['gain_mean'], key) for key, row in methods.items()
              if METHODS[key].family is None]
    if others:
        ax.scatter([r[0] for r in others], [r[1] for r in others], color='grey', s=14, label='other rows')
    ax.set_xscale('log')
    points = {key: (row['region_mib'], row['gain_mean']) for key, row in methods.items()}
    for key, offset in label_offsets(ax, points, fontsize=6.5).items():
        ax.annotate(key, points[key], textcoords='offset points', xytext=offset, fontsize=6.5,
                    color='dimgrey' if METHODS[key].family is None else 'black',
                    arrowprops=None if offset == (4, 3) else dict(arrowstyle='-', lw=0.4, color='grey'))
    if default_key in methods:
        row = methods[default_key]
        ax.scatter([row['region_mib']], [row['gain_mean']], s=160, facecolors='none', edgecolors='red',
                   linewidths=2, label=f'the default ({default_key})', zorder=5)
    ax.set_xlabel('measured memory of the fine-tuned region (MiB, log scale)')
    ax.set_ylabel('mIoU gain over the calibrated start (mean and std over seeds)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def label_offsets(ax, points: Dict[str, Tuple[float, float]], fontsize: float) -> Dict[str, Tuple[int, int]]:
    """Per label, an offset in points from its point (4 right, 3 up unless that overlaps a label already
    placed; then the nearest free slot above or below): crowded points keep readable labels."""
    ax.figure.canvas.draw()  # fixes the limits, so that data map to display points
    to_pt = 72 / ax.figure.dpi
    placed, offsets = [], {}
    for key, (x, y) in sorted(points.items(), key=lambda kv: (kv[1][0], -kv[1][1])):
        px, py = (v * to_pt for v in ax.transData.transform((x, y)))
        width, height = 0.6 * fontsize * len(key), fontsize + 1
        for dy in (3, 3 + height, 3 - height, 3 + 2 * height, 3 - 2 * height, 3 + 3 * height, 3 - 3 * height):
            box = (px + 4, py + dy, px + 4 + width, py + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        offsets[key] = (4, round(dy))
    return offsets


def main_rows(methods) -> Dict[str, dict]:
    """The rows of the main table: the benchmark's schedule and learning rate (not the diagnosis rows)."""
    return {k: row for k, row in methods.items() if METHODS[k].lr_scale == 1.0 and not METHODS[k].iters}


def best_within(methods, budget_mib) -> Optional[str]:
    """The compressed row (a plugin setting, not vanilla nor a diagnosis row) with the largest mean gain
    whose region memory is at most ``budget_mib``; None if there is none."""
    rows = [(row['gain_mean'], -row['region_mib'], key) for key, row in main_rows(methods).items()
            if METHODS[key].hook.get('method', 'hosvd') != 'none' and row['region_mib'] <= budget_mib]
    return max(rows)[2] if rows else None  # ties on gain: the least memory


def _gain(row) -> str:
    return f'{row["gain_mean"]:+.2f} ± {row["gain_std"]:.2f}'


def _gain_of(key, row) -> str:
    """:func:`_gain`, saying how many seeds where a main-table row sets its own (the ablations')."""
    seeds = METHODS[key].seeds
    note = f' ({len(seeds)} seeds)' if seeds is not None and not METHODS[key].iters else ''
    return _gain(row) + note


def _pct(row) -> str:
    return '' if row.get('gain_pct_of_vanilla') is None else f'{row["gain_pct_of_vanilla"]:.0f} %'


def _layers(key) -> str:
    n = METHODS[key].hook.get('num_layers')
    return "the paper's 10" if n is None else ('all' if n == ALL else f'last {n}')


def _layers_phrase(key) -> str:
    n = METHODS[key].hook.get('num_layers')
    return ("the paper's 10 layers" if n is None else 'all layers' if n == ALL else 'the last layer' if n == 1
            else f'the last {n} layers')


def default_line(result) -> List[str]:
    """The default's verdict against the targets of issue 22, on both models."""
    m, lines = result['methods'], []
    default = result['default']
    keys = ', '.join(f'{k}={v!r}' for k, v in default.items() if k in ('method', 'explained_variance',
                                                                           'norm_input_bits', 'center'))
    if 'default-10L' in m and 'none' in m:
        row, vanilla = m['default-10L'], m['none']
        less = vanilla['region_mib'] / row['region_mib']
        lines.append(f'**The default**, `dict(type=\'ActivationCompressionHook\', num_layers=10)` ({keys}; every '
                     f'hook default in `docs/finetune.json` under `default`): gain {_gain(row)} = '
                     f'{row["gain_pct_of_vanilla"]:.0f} % of vanilla\'s on the paper\'s 10 layers '
                     f'({vanilla["gain_mean"]:+.2f}; target >= 90 %), region {row["region_mib"]:.2f} MiB = '
                     f'{less:.1f}x less than vanilla\'s {vanilla["region_mib"]:.2f} (target >= 20x).'
                     + ('' if 'none-10L' not in m else f' Against vanilla on the same last 10 layers (`none-10L`, '
                        f'{m["none-10L"]["gain_mean"]:+.2f}, {m["none-10L"]["region_mib"]:.2f} MiB): '
                        f'{100 * row["gain_mean"] / m["none-10L"]["gain_mean"]:.0f} % of its gain, '
                        f'{m["none-10L"]["region_mib"] / row["region_mib"]:.1f}x less memory.'))
    psp = result.get('pspnet', {}).get('methods', {})
    if 'default-10L' in psp and 'none' in psp:
        row, vanilla = psp['default-10L'], psp['none']
        lines.append(f'On PSPNet-MobileNetV2-d8 (its own start, same protocol): {_gain(row)} = '
                     f'{row["gain_pct_of_vanilla"]:.0f} % of vanilla\'s {vanilla["gain_mean"]:+.2f}, region '
                     f'{row["region_mib"]:.2f} MiB = {vanilla["region_mib"] / row["region_mib"]:.1f}x less.')
    return lines


def choice_table(methods) -> List[str]:
    """For each vanilla row: the best compressed row that keeps no more memory, and its gain."""
    lines = ['| vanilla fine-tuning of | its gain | its region MiB | best compressed row within that memory '
             '| its layers | its gain | its region MiB |', '| --- | --- | --- | --- | --- | --- | --- |']
    vanillas = sorted(((row['region_mib'], key) for key, row in main_rows(methods).items()
                       if METHODS[key].family == 'vanilla'))
    for _, key in vanillas:
        row = methods[key]
        best = best_within(methods, row['region_mib'])
        cells = ['(none)', '', '', ''] if best is None else [
            best, _layers(best), _gain_of(best, methods[best]), f'{methods[best]["region_mib"]:.2f}']
        lines.append(f'| {_layers_phrase(key)} (`{key}`) | {_gain(row)} | {row["region_mib"]:.2f} | '
                     + ' | '.join(cells) + ' |')
    return lines


def main_table(methods) -> List[str]:
    lines = ['| method | layers | region BNs keep | mIoU end | gain (mean ± std) | gain % of vanilla | region MiB '
             '| region vs vanilla | step time vs vanilla | input energy kept |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    vanilla_mib = methods.get('none', {}).get('region_mib')
    for key, row in main_rows(methods).items():
        ratio, energy = row['step_ratio'], row['kept_energy']
        less = f'{vanilla_mib / row["region_mib"]:.1f}x less' if vanilla_mib and key != 'none' else ''
        lines.append(f'| {key} | {_layers(key)} | {row["region_bns_keep"]} | {row["miou_end"]:.2f} | '
                     f'{_gain_of(key, row)} | '
                     f'{_pct(row)} | {row["region_mib"]:.2f} | {less} | '
                     f'{"" if ratio is None else f"{ratio:.2f}x"} | '
                     f'{"" if energy is None else f"{100 * energy:.1f} %"} |')
    return lines


def depth_section(methods) -> List[str]:
    """Vanilla against the default at each depth, and the paper's two claims about depth."""
    rows = [(n, methods.get(depth_key('none', n)), methods.get(depth_key('default', n))) for n in DEPTHS]
    rows = [(n, v, d) for n, v, d in rows if v and d]
    if not rows:
        return []
    lines = ['## Depth: vanilla and the default over the last N layers', '',
             '| layers | vanilla gain | vanilla region MiB | default gain | default region MiB | default gain % of '
             'vanilla\'s at this depth | default step vs vanilla\'s at this depth |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    pcts = []
    for n, v, d in rows:
        # a share of a loss is no share: where vanilla does not gain, the default's gain stands alone
        pct = 100 * d['gain_mean'] / v['gain_mean'] if v['gain_mean'] > 0 else None
        pcts.append((n, pct))
        step = (f'{d["step_s"] / v["step_s"]:.2f}x' if d.get('step_s') and v.get('step_s') else '')
        lines.append(f'| {"all" if n == ALL else n} | {_gain(v)} | {v["region_mib"]:.2f} | {_gain(d)} | '
                     f'{d["region_mib"]:.2f} | {"(vanilla loses)" if pct is None else f"{pct:.0f} %"} | {step} |')
    losing = [n for n, p in pcts if p is None]
    # a share whose denominator is within twice its seed spread of zero is noise: left out of the trend
    spread = {n: v['gain_mean'] <= 2 * v['gain_std'] for n, v, _ in rows}
    noisy = [n for n, p in pcts if p is not None and spread[n]]
    known = [(n, p) for n, p in pcts if p is not None and not spread[n]]
    lines += ['', 'The paper\'s README claims (1) that its compression "does not accumulate errors as gradients '
              'propagate deeper (when fine-tuning more layers)" and (2) that "fine-tuning all layers using '
              'HOSVD consumes less memory than fine-tuning only a single layer with vanilla training". Here:', '']
    shares = ', '.join(f'{"all" if n == ALL else f"{n}L"} {p:.0f} %' for n, p in known)
    if len(known) >= 2:
        p0, p1 = known[0][1], known[-1][1]
        trend = ('falls' if p1 < p0 - 10 else 'rises' if p1 > p0 + 10 else 'stays within 10 points')
        verdict = (f'{shares}; from the shallowest to the deepest of these it {trend} (a fall of more than 10 '
                   'points counts as accumulating)')
    else:
        verdict = f'{shares or "none"}; too few depths where vanilla gains to tell a trend'
    if noisy:
        verdict += ('; left out: ' + ', '.join('all layers' if n == ALL else f'{n}L' for n in noisy)
                    + ', where vanilla\'s gain is within twice its seed spread of zero')
    if losing:
        verdict += ('; at ' + ', '.join('all layers' if n == ALL else f'{n} layers' for n in losing)
                    + ' vanilla itself loses mIoU, so there is no share to compare')
    lines.append(f'- (1) the default\'s gain as a share of vanilla\'s at the same depth: {verdict}.')
    one, deepest = methods.get(depth_key('none', 1)), methods.get(depth_key('default', ALL))
    if one and deepest:
        holds = deepest['region_mib'] < one['region_mib']
        lines.append(f'- (2) the default over all layers keeps {deepest["region_mib"]:.2f} MiB in its region, '
                     f'vanilla over the last one {one["region_mib"]:.2f} MiB: '
                     f'{"true" if holds else "false"} here; their gains {_gain(deepest)} and {_gain(one)}.')
    return lines + ['']


def class_section(methods, class_pixels, start_class_iou) -> List[str]:
    """Each class's IoU gain per main method, with the class's share of the val pixels."""
    keys = [k for k in ('none', 'default-10L', 'hosvd-0.8', 'hosvd-0.8-whole-batch', 'hosvd-0.9-whole-batch-bn2',
                        'hosvd-0.9-bn4', 'hosvd-0.95-bn4', 'svd-0.9', 'gradfilt-r2', 'gradfilt-r4')
            if 'class_gain' in methods.get(k, {})]
    if not keys or not start_class_iou:
        return []
    total = sum(class_pixels.values())
    lines = ['## Where the gain goes: per class', '',
             'IoU gain of each target class over the calibrated start (mean over seeds), from the per-class '
             'table mmseg\'s IoUMetric logs at each run\'s last validation; in brackets, the share of '
             'vanilla\'s gain on that class.', '',
             '| class | val pixels | start IoU | ' + ' | '.join(keys) + ' |',
             '| --- | --- | --- |' + ' --- |' * len(keys)]
    for cls, start in start_class_iou.items():
        vanilla = methods['none']['class_gain'][cls] if 'none' in keys else None
        cells = []
        for k in keys:
            gain = methods[k]['class_gain'][cls]
            share = f' ({100 * gain / vanilla:.0f} %)' if vanilla and k != 'none' and abs(vanilla) > 0.5 else ''
            cells.append(f'{gain:+.2f}{share}')
        lines.append(f'| {cls} | {100 * class_pixels.get(cls, 0) / total:.1f} % | {start:.2f} | '
                     + ' | '.join(cells) + ' |')
    return lines + ['']


def diagnosis_section(methods) -> List[str]:
    """The learning-rate sweep of the paper's setting and the longer schedule."""
    lines = []
    sweep = [k for k in ('hosvd-0.8', 'hosvd-0.8-lr1.5x', 'hosvd-0.8-lr2x') if k in methods]
    if len(sweep) > 1:
        lines += ['## Where the gain goes: learning rate', '',
                  'The paper\'s setting (HOSVD ε 0.8) at 1x, 1.5x and 2x the benchmark\'s learning rate: a '
                  'truncated weight gradient is shorter than the exact one (docs/grad_fidelity.md, norm ratio), '
                  'so a larger rate would recover what the length loses, not what the direction loses.', '',
                  '| method | learning rate | gain | gain % of vanilla |', '| --- | --- | --- | --- |']
        for k in ['none'] + sweep:
            lines.append(f'| {k} | {METHODS[k].lr_scale:g}x | {_gain(methods[k])} | {_pct(methods[k])} |')
        lines.append('')
    long = [k for k in ('none-300it', 'hosvd-0.8-300it') if k in methods]
    if len(long) == 2:
        v, h = (methods[k]['seeds'][0]['curve'] for k in long)
        start = methods[long[0]]['miou_start']
        lines += ['## Where the gain goes: a longer schedule', '',
                  f'Vanilla and the paper\'s setting over {v[-1][0]} iterations (one seed; the cosine decay '
                  'stretched to the end): gain over the start at each validation, and the paper\'s setting\'s '
                  'share of vanilla\'s.', '', '| iteration | vanilla gain | HOSVD ε 0.8 gain | share |',
                  '| --- | --- | --- | --- |']
        for (it, mv), (_, mh) in zip(v, h):
            share = f'{100 * (mh - start) / (mv - start):.0f} %' if mv - start > 0.5 else ''
            lines.append(f'| {it} | {mv - start:+.2f} | {mh - start:+.2f} | {share} |')
        lines.append('')
    return lines


def pspnet_section(psp) -> List[str]:
    if not psp:
        return []
    p = psp['protocol']
    lines = [f'## {p["model"]}', '', f'Its own start (source val mIoU {p["source_miou"]:.2f}) and calibration '
             f'(target {p["start_miou"]:.2f}), the same data, seeds and schedule; vanilla on {p["layers"]}.', '',
             '| method | layers | gain (mean ± std) | gain % of vanilla | region MiB | region vs vanilla | step time '
             'vs vanilla |', '| --- | --- | --- | --- | --- | --- | --- |']
    m = psp['methods']
    for key, row in m.items():
        less = f'{m["none"]["region_mib"] / row["region_mib"]:.1f}x less' if key != 'none' else ''
        ratio = '' if row['step_ratio'] is None else f'{row["step_ratio"]:.2f}x'
        lines.append(f'| {key} | {_layers(key)} | {_gain(row)} | {_pct(row)} | {row["region_mib"]:.2f} | {less} | '
                     f'{ratio} |')
    return lines + ['']


def markdown(result, command):
    m, p = result['methods'], result['protocol']
    hours = result.get('runs_wall_s')
    lines = ['# Does it beat fine-tuning without it? Gain over the calibrated start, memory and step time per '
             'method', '',
             f'Written by `{command}` ({result["wall_s"] / 60:.0f} min this invocation'
             + (', reusing the runs, memory reports and step times an earlier invocation finished'
                if result['resumed'] else '')
             + ('' if not hours else f'; the {result["runs_count"]} fine-tuning runs behind the page took '
                f'{hours / 3600:.1f} h in all, each run\'s wall time summed, {p["jobs"]} running side by side')
             + f'); figures in `{result["json"]}`. Do not edit: rerun the command.', '']
    lines += default_line(result) + ['', 'What fine-tuning fits in a given memory: for each vanilla row, the '
                                     'best row of the plugin that keeps no more in the fine-tuned region.', '']
    lines += choice_table(m)
    lines += ['', f'![memory against gain]({osp.basename(result["pareto"])})', '',
              '## All methods', '']
    lines += main_table(m)
    pending = [k for k in METHODS if k not in m]
    if pending:
        lines += ['', f'Rows of the benchmark not on this page (no finished runs of every seed in the work dir; '
                  f'`--resume --methods KEY ...` runs them): {", ".join(f"`{k}`" for k in pending)}.']
    fewer = sorted(k for k in m if METHODS[k].seeds is not None and not METHODS[k].iters)
    lines += ['', f'Seeds {p["seeds"]}'
              + (f' ({", ".join(f"`{k}`" for k in fewer)}: seeds {list(ABLATION_SEEDS)}, rows of earlier issues)'
                 if fewer else '')
              + f'; each seed fixes the data order and augmentation, the same for every '
              f'method. {p["iters"]} iterations of batch {p["batch_size"]} at {p["crop"]} per run, SGD lr '
              f'{p["lr"]:g} with a 10-iteration warm-up and a cosine decay, val every {p["val_interval"]} '
              f'iterations on {p["val_images"]} target images; {p["jobs"]} runs side by side. Layers: the paper\'s '
              '10 (its official layer set), or the last N convs in the order the inference forward runs them '
              '(`num_layers=N`, the hook\'s way; "all": every one). Region MiB: what autograd keeps for backward in '
              'the fine-tuned region, measured by `tools/measure_activation_memory.py` on 3 training batches after '
              'the first seed\'s run. Step time: mean iteration time of a '
              f'{TIMED_ITERS}-iteration run per method, alone on the machine, the first {TIME_WINDOW} left out; '
              f'vanilla {m["none"]["step_s"]:.2f} s. Input energy kept: ||x_hat||^2 / ||x||^2 of what the '
              'compressed convs keep for the weight gradient, the mean over layers and logged iterations '
              '(`actcomp_kept_energy` in the training logs). The compressed methods keep their inputs\' '
              'per-channel means exactly and decompose the rest (the hook\'s default `center=True`); '
              '`-uncentred` is the paper\'s decomposition of the raw input. Gradient Filter (`gradfilt-rR`) '
              'keeps its input summed over (R·stride)² patches and averages the output gradient over R² '
              'patches: its input gradients are approximate too.', '',
              ('' if p['source_miou'] is None else f'Start: the decode head trained on the source task '
               f'reaches {p["source_miou"]:.2f} mIoU on the source val split; ')
              + f'conv_seg calibrated on the target gives {p["start_miou"]:.2f}. One val '
              f'image more or less moves the mIoU of vanilla seed {p["seeds"][0]} by at most '
              f'{p["val_loo_max_delta"]:.2f} points ({p["val_loo_miou"]:.2f} on all images).', '',
              'What stands in for what: source task = the paper\'s Cityscapes pre-training (other classes, '
              'other scenes: the eight ARC 2017 objects on real photos); target task = Pascal VOC (the VOC '
              'photo\'s bottle, person and dining-table cut-outs on real photos, VOC labels); '
              '`tools/make_sample_voc.py --data finetune` writes both.', '']
    lines += depth_section(m)
    lines += class_section(m, p.get('class_pixels', {}), p.get('start_class_iou'))
    lines += diagnosis_section(m)
    lines += pspnet_section(result.get('pspnet'))
    lines += ['## Ranks per layer', '', 'HOSVD ranks (batch, channel, height, width; the largest over the '
              'measured batches) and SVD ranks (batch) on the paper\'s 10 layers, per method, on the first seed\'s '
              'trained weights; a centred method\'s ranks count the mean as one component:', '']
    ranked = [k for k, row in main_rows(m).items() if METHODS[k].hook.get('method') in ('hosvd', 'svd')
              and 'num_layers' not in METHODS[k].hook and row.get('ranks')]
    if ranked:
        lines += ['| layer | ' + ' | '.join(ranked) + ' |', '| --- |' + ' --- |' * len(ranked)]
        for layer in m[ranked[0]]['ranks']:
            lines.append(f'| {layer} | ' + ' | '.join('x'.join(map(str, m[k]['ranks'].get(layer) or ['-']))
                                                   for k in ranked) + ' |')
    lines += ['', f'![val mIoU per iteration]({osp.basename(result["curves"])})']
    return '\n'.join(lines) + '\n'


def finished_methods(work, model: Model, seeds, iters) -> List[str]:
    """The methods whose runs are all finished in the work dir (``--resume`` puts them on the page)."""
    keys = []
    for key, method in METHODS.items():
        if all(finished(f'{model_work(work, model)}/{key}/seed{s}', method.iters or iters)
               for s in method.seeds or seeds):
            keys.append(key)
    return keys


def benchmark_model(args, model_key, keys, pool):
    """Stages 1-3 of one model for ``keys``: its summary (methods with memory and step time) and protocol."""
    model = MODELS[model_key]
    work = args.work_dir
    if args.calibrated and model_key == 'deeplabv3':
        calibrated = args.calibrated
        start_miou = val_curve(scalars(osp.dirname(calibrated)))[-1][1]
        start_class_iou = run_class_ious(osp.dirname(calibrated))
        source_miou = None  # the start was made elsewhere
    else:
        calibrated, start_miou, source_miou, start_class_iou = prepare_start(work, model, args.resume)
    num_convs = conv_count(model.finetune)
    # The learning runs share the cores, `--jobs` at a time with cores / jobs threads each (the eigen-
    # solvers are single-threaded, so two runs side by side use the machine better); their iteration
    # times are therefore not compared. Step times come from short runs afterwards, alone.
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [(key, seed) for seed in args.seeds for key in keys if METHODS[key].seeds is None]
    jobs += [(key, seed) for key in keys for seed in METHODS[key].seeds or ()]
    runs, memory = {key: {} for key in keys}, {}
    done = {pool.submit(finetune, work, model, key, seed, calibrated, args.iters, args.val_interval, num_convs,
                        threads, args.resume): (key, seed) for key, seed in jobs}
    for future in as_completed(done):
        key, seed = done[future]
        runs[key][seed] = future.result()
    measured = {pool.submit(measure, work, model, key, runs[key][min(runs[key])]['run_dir'], num_convs, threads,
                            args.resume): key for key in keys}
    for future in as_completed(measured):
        memory[measured[future]] = future.result()
    step_s = {key: time_steps(work, model, key, calibrated, num_convs, args.resume and not args.retime)
              for key in keys if not METHODS[key].iters}
    methods = summarise(runs, start_miou, step_s, start_class_iou=start_class_iou)
    from mmseg_actcomp.memory.pareto import report_memory_mib
    for key, row in methods.items():
        row['region_mib'] = report_memory_mib(memory[key], 'region')
        row['ranks'] = {layer['path']: layer['ranks'] for layer in memory[key]['layers']}
        row['region_bns_keep'] = region_bns_keep(hook_overrides(METHODS[key], num_convs))
        row['num_layers'] = memory[key]['num_layers']
    protocol = dict(seeds=args.seeds, iters=args.iters, val_interval=args.val_interval, jobs=args.jobs,
                    **finetune_settings(model.finetune), start_miou=start_miou, source_miou=source_miou,
                    start_class_iou=start_class_iou, model=model.name, num_convs=num_convs,
                    layers='the paper\'s 10 layers',
                    configs=dict(start=model.head, calibrate=model.calib, finetune=model.finetune))
    return methods, protocol


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--iters', type=int, default=100, help='fine-tuning iterations per run')
    p.add_argument('--val-interval', type=int, default=100, help='validate every N iterations (default: at '
                                                                    'the end only)')
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS),
                   help='the rows to run (default: all); with --resume the page also holds every row finished '
                        'in --work-dir')
    p.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS),
                   help=f'deeplabv3: every method; pspnet: {", ".join(PSPNET_METHODS)} (a "pspnet" section)')
    p.add_argument('--work-dir', default='work_dirs/finetune')
    p.add_argument('--out', default='docs/finetune', help='writes OUT.md, OUT.json, OUT_curves.png, '
                                                         'OUT_pareto.png')
    p.add_argument('--calibrated', help='start DeepLabV3 from this calibrated checkpoint instead of making one')
    p.add_argument('--jobs', type=int, default=2, help='learning runs side by side (default 2)')
    p.add_argument('--resume', action='store_true',
                   help='reuse the finished runs, memory reports and step times in --work-dir (an interrupted '
                        'benchmark goes on where it stopped)')
    p.add_argument('--retime', action='store_true', help='with --resume, measure every step time anew (alone, '
                                                         'in this invocation) so that their ratios compare')
    args = p.parse_args(argv)
    if args.iters < 1 or args.val_interval < 1 or args.iters % args.val_interval:
        p.error(f'--iters ({args.iters}) must be a positive multiple of --val-interval ({args.val_interval})')
    if args.jobs < 1:
        p.error(f'--jobs must be >= 1, got {args.jobs}')
    if 'none' not in args.methods:
        p.error(f'--methods must include none (vanilla), the yardstick of every gain; got {args.methods}')
    if not osp.isdir(osp.join(REPO, DATA)):
        sys.exit(f'{DATA} is missing: write it with `{DATA_COMMAND}` (about 10 s)')
    start = time.time()
    keys = list(args.methods)
    if args.resume:
        done = finished_methods(args.work_dir, MODELS['deeplabv3'], args.seeds, args.iters)
        keys += [k for k in METHODS if k in done and k not in keys]
    keys = [k for k in METHODS if k in keys]  # the page's order
    with ThreadPoolExecutor(args.jobs) as pool:
        methods, protocol = benchmark_model(args, 'deeplabv3', keys, pool) if 'deeplabv3' in args.models else ({}, {})
        psp = None
        if 'pspnet' in args.models:
            psp_methods, psp_protocol = benchmark_model(args, 'pspnet', list(PSPNET_METHODS), pool)
            psp = dict(methods=psp_methods, protocol=psp_protocol)
    if not methods:
        p.error('--models must include deeplabv3: the page is about it')
    loo_miou, loo_delta, val_images = leave_one_out_spread(
        last_checkpoint(f'{args.work_dir}/none/seed{args.seeds[0]}'))
    protocol.update(val_images=val_images, val_loo_miou=loo_miou, val_loo_max_delta=loo_delta,
                    class_pixels=val_class_pixels(MODELS['deeplabv3'].finetune))
    out = args.out
    os.makedirs(osp.dirname(osp.join(REPO, out)) or '.', exist_ok=True)
    every_run = [s for section in (methods, (psp or {}).get('methods', {})) for row in section.values()
                 for s in row['seeds']]
    walls = [s['wall_s'] for s in every_run if s['wall_s'] is not None]
    result = dict(
        command='python benchmarks/finetune.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
        json=f'{out}.json', curves=f'{out}_curves.png', pareto=f'{out}_pareto.png',
        default=hook_defaults(), protocol=protocol, methods=methods, wall_s=time.time() - start,
        runs_count=len(every_run), runs_wall_s=sum(walls) if len(walls) == len(every_run) else None,
        resumed=args.resume)
    if psp:
        result['pspnet'] = psp
    plot_curves(main_rows(methods), osp.join(REPO, result['curves']))
    plot_families(main_rows(methods), osp.join(REPO, result['pareto']))
    result['command'] = result['command'].strip()
    with open(osp.join(REPO, result['json']), 'w') as f:
        json.dump(result, f, indent=1)
    text = markdown(result, result['command'])
    with open(osp.join(REPO, f'{out}.md'), 'w') as f:
        f.write(text)
    print(text)


if __name__ == '__main__':
    main()
