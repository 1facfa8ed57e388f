"""Does the hook work on the whole mmseg zoo? For each model family, take mmseg's own config of it (the
copy mmsegmentation ships) with the hook line a user adds (HOSVD, eps 0.8, ``num_layers=10``), then

1. measure one training step (the segmentor's own loss, forward + backward, train mode) on a random
   batch, vanilla fine-tuning of the same layers beside HOSVD: what the fine-tuned region keeps, and that
   every chosen layer gets its weight gradient;
2. train it with mmseg's stock loop (mmengine's ``Runner``, as ``tools/train.py`` builds it) for 3
   iterations on the bundled sample VOC data, validate once (mIoU) and save a checkpoint.

    python tools/zoo_sweep.py [--families fcn hrnet ...] [--size 128] [--batch 2] [--out docs/zoo.md]
                              [--data-root data/sample_voc/VOCdevkit/VOC2012 | --no-train]

Changes to mmseg's configs, all forced by this machine: SyncBN -> BN (one process), no pretrained
checkpoint download (random init, so ranks say nothing about a trained net; ``data_preprocessor.size`` set
to the input); for the stock loop, 21 VOC classes and the dataset, runtime and schedule of
``configs/sample`` (Cityscapes's class weights, where a config has them, dropped with its 19 classes).
"""
import argparse
import copy
import math
import os.path as osp
import sys
import tempfile
import time
import traceback
import warnings

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
}
#: families whose head needs a larger input than --size (LRASPP pools with a 49x49 window at stride 8)
MIN_SIZE = {'mobilenet_v3': 448}
HOOK = dict(type='ActivationCompressionHook', method='hosvd', explained_variance=0.8, num_layers=10)
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
    """``model_cfg`` (a plain dict) with SyncBN -> BN, pretrained weights dropped, the input size set."""
    from mmseg_actcomp.apis.checks import walk_dicts
    model_cfg = copy.deepcopy(model_cfg)
    for _, node in walk_dicts(model_cfg):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for key, value in node.items():
            if key == 'pretrained' or (key == 'init_cfg' and isinstance(value, dict)
                                       and value.get('type') == 'Pretrained'):
                node[key] = None  # (not walked into)
    model_cfg['data_preprocessor'] = dict(model_cfg.get('data_preprocessor') or {}, size=(size, size))
    return model_cfg


def voc_model_cfg(model_cfg: dict) -> dict:
    """``model_cfg`` with every head predicting the 21 VOC classes; per-class loss weights written for
    another class count are dropped (CGNet's Cityscapes weights)."""
    from mmseg_actcomp.apis.checks import walk_dicts
    model_cfg = copy.deepcopy(model_cfg)
    for _, node in walk_dicts(model_cfg):
        if 'num_classes' in node:
            node['num_classes'] = VOC_CLASSES
        weights = node.get('class_weight')
        if isinstance(weights, (list, tuple)) and len(weights) != VOC_CLASSES:
            node['class_weight'] = None
    return model_cfg


def stock_config(model_cfg: dict, data_root: str, work_dir: str, size: int, batch: int, seed: int):
    """The mmengine config ``tools/train.py`` would run: ``configs/sample``'s dataset, runtime and
    schedule with ``model_cfg`` (VOC classes), the hook line, 3 iterations, one validation and one
    checkpoint at the end, quiet logs."""
    from mmengine.config import Config, ConfigDict
    cfg = Config.fromfile(SAMPLE_CONFIG)
    cfg.model = ConfigDict(voc_model_cfg(model_cfg))
    cfg.custom_imports = dict(imports=['mmseg_actcomp'], allow_failed_imports=False)
    cfg.custom_hooks = [HOOK]
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
    cfg.val_dataloader.dataset.data_root = data_root
    for step in cfg.val_dataloader.dataset.pipeline:
        if step.type == 'Resize':
            step.scale = (4 * size, size)
    cfg.test_dataloader = cfg.val_dataloader
    return cfg


def train_stock(model_cfg: dict, data_root: str, size: int, batch: int, seed: int) -> dict:
    """Train ``model_cfg`` with the hook through mmengine's ``Runner`` (``stock_config``) in a temporary
    work dir: the last training loss, the validation mIoU, the hook's logged compression scalars, and
    whether the checkpoint holds the fine-tuned layers' weights."""
    import torch
    from mmengine.runner import Runner
    with tempfile.TemporaryDirectory(prefix='zoo_') as work_dir:
        cfg = stock_config(model_cfg, data_root, work_dir, size, batch, seed)
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
        missing = [p for p in hook.region.fine_tuned if f'{p}.weight' not in state]
        if missing:
            raise RuntimeError(f'the checkpoint {checkpoint} lacks the weights of {missing}')
        return dict(train_loss=loss, miou=hub.get_scalar('val/mIoU').current(), actcomp=scalars)


def sweep_family(family: str, size: int = 128, batch: int = 2, seed: int = 0,
                 data_root: str = None) -> dict:
    """One family's row: ok, layers chosen, region bytes vanilla / HOSVD, step seconds, or the error;
    with ``data_root`` (the sample VOC), also the stock loop's loss and mIoU (``train_stock``)."""
    import torch
    from mmengine.config import Config, ConfigDict
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import HOOKS
    from mmseg.structures import SegDataSample

    import mmseg_actcomp  # noqa: F401  (registers the hook and layers)
    from mmseg_actcomp.memory import measure_step
    from mmseg_actcomp.apis.segmentor import build_segmentor

    config = FAMILIES[family]
    row = dict(family=family, config=config, ok=False)
    start = time.perf_counter()
    try:
        init_default_scope('mmseg')
        cfg = Config.fromfile(osp.join(mmseg_config_dir(), config))
        size = max(size, MIN_SIZE.get(family, 0))
        torch.manual_seed(seed)
        # a ConfigDict, as training builds it: heads read test_cfg.mode as an attribute
        cfg.model = ConfigDict(cpu_model_cfg(cfg.model.to_dict(), size))
        model = build_segmentor(cfg)  # init_weights(), quietly; mmseg's configs load no checkpoint
        row['input'] = f'{batch}x3x{size}x{size}'
        generator = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, 3, size, size, generator=generator)
        head = cfg.model.decode_head
        num_classes = (head[-1] if isinstance(head, list) else head).num_classes
        labels = torch.randint(0, num_classes, (batch, 1, size, size), generator=generator)
        shape = dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size))
        samples = [SegDataSample(gt_sem_seg=PixelData(data=label), metainfo=shape) for label in labels]

        def loss_of(net):
            return net.parse_losses(net(x, samples, mode='loss'))[0]
        region = {}
        for method in ('none', 'hosvd'):
            net = copy.deepcopy(model)
            fine_tune = HOOKS.build(dict(HOOK, method=method)).region
            paths = fine_tune.apply(net)
            net.train()
            fine_tune.set_norms_eval()
            step = measure_step(net, lambda: loss_of(net), paths)
            loss_of(net).backward()  # measure_step leaves no gradients: check they reach every chosen layer
            missing = [p for p in paths if net.get_submodule(p).weight.grad is None]
            if missing:
                raise RuntimeError(f'no weight gradient reached {missing}')
            region[method] = step.saved['region']
            row['layers'] = paths
            row['lean_ops'] = sorted(step.saved['per_op']['region'])
        row.update(region_vanilla_bytes=region['none'], region_hosvd_bytes=region['hosvd'])
        if data_root is not None:
            row['stock'] = train_stock(cfg.model.to_dict(), data_root, size, batch, seed)
        row['ok'] = True
    except Exception as e:  # a row per family, whatever breaks
        row['error'] = f'{type(e).__name__}: {e}'.splitlines()[0][:300]
        row['traceback'] = traceback.format_exc(limit=-3)
    row['seconds'] = time.perf_counter() - start
    return row


def markdown(rows, command: str, size: int, batch: int) -> str:
    ok = sum(r['ok'] for r in rows)
    trained = any('stock' in r for r in rows)
    lines = ['# The hook across the mmseg zoo', '',
             f'Written by `{command}`; do not edit: rerun the command.', '',
             f'{ok} of {len(rows)} families pass: mmseg 1.2.2\'s own config of each (SyncBN -> BN, random '
             f'init) with `{HOOK}`. **Step**: a random input {batch}x3x{size}x{size} unless the row says '
             'otherwise, random labels, one training step (the model\'s loss, forward + backward) '
             'measured, and the weight gradient checked on every chosen layer; `region` is what the '
             'fine-tuned region keeps for backward with vanilla fine-tuning of the same layers '
             '(`method=\'none\'`) and with HOSVD (random weights: ranks say nothing about a trained net).']
    if trained:
        lines[-1] += (f' **Stock loop**: mmengine\'s `Runner` from the config, as `tools/train.py` builds it, '
                      f'with `configs/sample`\'s dataset (sample VOC, 21 classes, crops of the step\'s size), '
                      f'runtime and schedule: {STOCK_ITERS} iterations, one validation, one checkpoint '
                      '(checked to hold every chosen layer); its last loss and the mIoU of 3 iterations from '
                      'random init (near 0: it shows the loop ran, not that the model learnt).')
    lines += ['', '| family | config | input | pass | layers chosen (first ... last) | region vanilla MiB '
              '| region HOSVD MiB | less |' + (' stock loss | stock mIoU |' if trained else '') + ' s | error |',
              '|' + ' --- |' * (12 if trained else 10)]
    for r in rows:
        layers = r.get('layers') or []
        chosen = f"{len(layers)}: `{layers[0]}` ... `{layers[-1]}`" if layers else ''
        vanilla, hosvd = r.get('region_vanilla_bytes'), r.get('region_hosvd_bytes')
        less = f'{vanilla / hosvd:.1f}x' if vanilla and hosvd else ''
        stock = ''
        if trained:
            s = r.get('stock')
            stock = f" {s['train_loss']:.3f} | {s['miou']:.2f} |" if s else '  |  |'
        lines.append(f"| {r['family']} | `{r['config']}` | {r.get('input', '')} | {'yes' if r['ok'] else 'NO'} | "
                     f"{chosen} | "
                     f"{'' if vanilla is None else f'{vanilla / MIB:.2f}'} | "
                     f"{'' if hosvd is None else f'{hosvd / MIB:.2f}'} | {less} |{stock} {r['seconds']:.0f} | "
                     f"{r.get('error', '').replace('|', '/')} |")
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
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {family:14s} {row['seconds']:5.1f} s  "
              f"{row.get('error', '')}", flush=True)
        rows.append(row)
    command = 'python tools/zoo_sweep.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    text = markdown(rows, command.strip(), args.size, args.batch)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    print(text)
    return 0 if all(r['ok'] for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
