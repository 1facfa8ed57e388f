"""Does the hook work on the whole mmseg zoo? For each model family, build mmseg's own config of it (the
copy mmsegmentation ships), apply ``ActivationCompressionHook`` as a user's config line would (HOSVD, eps
0.8, ``num_layers=10``) and run one measured training step (the segmentor's own loss, forward + backward,
train mode) on a random batch with random labels; compare what the fine-tuned region keeps with vanilla fine-tuning of the same layers.

    python tools/zoo_sweep.py [--families fcn hrnet ...] [--size 128] [--batch 2] [--out docs/zoo.md]

Changes to mmseg's configs, all forced by this machine: SyncBN -> BN (one process), no pretrained
checkpoint download (random init, so ranks say nothing about a trained net; ``data_preprocessor.size`` set
to the input). It checks that choosing, swapping, freezing and the lean region work on each architecture
and that the step runs and saves less; it does not train with mmseg's loop (the tests do that for the four
named families).
"""
import argparse
import copy
import os.path as osp
import sys
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


def mmseg_config_dir() -> str:
    import mmseg
    return osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs')


def cpu_model_cfg(model_cfg: dict, size: int) -> dict:
    """``model_cfg`` (a plain dict) with SyncBN -> BN, pretrained weights dropped, the input size set."""
    def visit(node):
        if isinstance(node, dict):
            if node.get('type') == 'SyncBN':
                node['type'] = 'BN'
            for key in list(node):
                if key == 'pretrained' or (key == 'init_cfg' and isinstance(node[key], dict)
                                           and node[key].get('type') == 'Pretrained'):
                    node[key] = None
                else:
                    visit(node[key])
        elif isinstance(node, list):
            for item in node:
                visit(item)
    model_cfg = copy.deepcopy(model_cfg)
    visit(model_cfg)
    model_cfg['data_preprocessor'] = dict(model_cfg.get('data_preprocessor') or {}, size=(size, size))
    return model_cfg


def sweep_family(family: str, size: int = 128, batch: int = 2, seed: int = 0) -> dict:
    """One family's row: ok, layers chosen, region bytes vanilla / HOSVD, step seconds, or the error."""
    import torch
    from mmengine.config import Config, ConfigDict
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import HOOKS
    from mmseg.structures import SegDataSample

    import mmseg_actcomp  # noqa: F401  (registers the hook and layers)
    from mmseg_actcomp.memory import measure_step
    from mmseg_actcomp.memory.segmentor import build_segmentor

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
            hook = HOOKS.build(dict(HOOK, method=method))
            paths = hook.prepare(net)
            net.train()
            hook.before_train_iter(None, 0)
            step = measure_step(net, lambda: loss_of(net), paths)
            loss_of(net).backward()  # measure_step leaves no gradients: check they reach every chosen layer
            missing = [p for p in paths if net.get_submodule(p).weight.grad is None]
            if missing:
                raise RuntimeError(f'no weight gradient reached {missing}')
            region[method] = step.saved['region']
            row['layers'] = paths
            row['lean_ops'] = sorted(step.saved['per_op']['region'])
        row.update(ok=True, region_vanilla_bytes=region['none'], region_hosvd_bytes=region['hosvd'])
    except Exception as e:  # a row per family, whatever breaks
        row['error'] = f'{type(e).__name__}: {e}'.splitlines()[0][:300]
        row['traceback'] = traceback.format_exc(limit=-3)
    row['seconds'] = time.perf_counter() - start
    return row


def markdown(rows, command: str, size: int, batch: int) -> str:
    ok = sum(r['ok'] for r in rows)
    lines = ['# The hook across the mmseg zoo', '',
             f'Written by `{command}`; do not edit: rerun the command.', '',
             f'{ok} of {len(rows)} families pass: mmseg 1.2.2\'s own config of each (SyncBN -> BN, random '
             f'init, random input {batch}x3x{size}x{size} unless the row says otherwise, random labels), '
             f'`{HOOK}` applied as training applies it, one training step (the model\'s loss, forward + '
             'backward) measured, and the weight gradient checked on every chosen layer; `region` is what the fine-tuned region keeps for '
             'backward with vanilla fine-tuning of the same layers (`method=\'none\'`) and with HOSVD '
             '(random weights: ranks say nothing about a trained net).', '',
             '| family | config | input | pass | layers chosen (first ... last) | region vanilla MiB '
             '| region HOSVD MiB | less | s | error |', '|' + ' --- |' * 10]
    for r in rows:
        layers = r.get('layers') or []
        chosen = f"{len(layers)}: `{layers[0]}` ... `{layers[-1]}`" if layers else ''
        vanilla, hosvd = r.get('region_vanilla_bytes'), r.get('region_hosvd_bytes')
        less = f'{vanilla / hosvd:.1f}x' if vanilla and hosvd else ''
        lines.append(f"| {r['family']} | `{r['config']}` | {r.get('input', '')} | {'yes' if r['ok'] else 'NO'} | {chosen} | "
                     f"{'' if vanilla is None else f'{vanilla / MIB:.2f}'} | "
                     f"{'' if hosvd is None else f'{hosvd / MIB:.2f}'} | {less} | {r['seconds']:.0f} | "
                     f"{r.get('error', '').replace('|', '/')} |")
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--families', nargs='+', choices=list(FAMILIES), default=list(FAMILIES))
    p.add_argument('--size', type=int, default=128, help='input height and width')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--out', help='write the markdown table here (e.g. docs/zoo.md)')
    args = p.parse_args(argv)
    if args.size < 32 or args.batch < 1:
        p.error(f'--size must be >= 32 and --batch >= 1, got {args.size} and {args.batch}')
    warnings.filterwarnings('ignore')
    rows = []
    for family in args.families:
        row = sweep_family(family, args.size, args.batch)
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
