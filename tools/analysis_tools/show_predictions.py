"""Draw val images, their ground truth and each checkpoint's prediction side by side, in the VOC palette.

    python tools/analysis_tools/show_predictions.py CONFIG CKPT_BEFORE CKPT_AFTER [...]
        [--titles before after] [--num-images 4] [--out work_dirs/demo/predictions.png]

One row per image: image | ground truth | one prediction per checkpoint (ignored pixels in white). The
images are the first ``--num-images`` of the config's val split that hold an object.
"""
import argparse
import os
import os.path as osp

import numpy as np
from PIL import Image


def voc_colours(num_classes):
    """(256, 3) uint8: the Pascal VOC palette (mmseg's PascalVOCDataset METAINFO) with 255 in white."""
    from mmseg.datasets import PascalVOCDataset
    colours = np.zeros((256, 3), np.uint8)
    colours[:num_classes] = np.array(PascalVOCDataset.METAINFO['palette'][:num_classes], np.uint8)
    colours[255] = 255
    return colours


def val_items(cfg, count):
    """``count`` (image path, label (h, w) uint8) pairs of the config's val split with an object."""
    dataset = cfg.val_dataloader.dataset
    root = dataset.data_root
    names = open(osp.join(root, dataset.ann_file)).read().split()
    items = []
    for name in names:
        label = np.asarray(Image.open(osp.join(root, dataset.data_prefix.seg_map_path, name + '.png')))
        if ((label > 0) & (label < 255)).any():
            items.append((osp.join(root, dataset.data_prefix.img_path, name + '.jpg'), label))
        if len(items) == count:
            break
    return items


def draw(rows, titles, out):
    """rows: per image a list of (h, w, 3) uint8 panels; writes a PNG grid with column titles."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(2.2 * len(titles), 1.8 * len(rows)),
                             squeeze=False)
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            axes[r][c].imshow(panel)
            axes[r][c].axis('off')
            if r == 0:
                axes[r][c].set_title(titles[c], fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoints', nargs='+')
    p.add_argument('--titles', nargs='+', help='one per checkpoint (default: the file names)')
    p.add_argument('--num-images', type=int, default=4)
    p.add_argument('--out', default='predictions.png')
    args = p.parse_args(argv)
    if args.titles and len(args.titles) != len(args.checkpoints):
        p.error(f'--titles gives {len(args.titles)} titles for {len(args.checkpoints)} checkpoints')
    if args.num_images < 1:
        p.error(f'--num-images must be >= 1, got {args.num_images}')
    for path in [args.config] + args.checkpoints:
        if not osp.isfile(path):
            p.error(f'no such file: {path}')

    from mmengine.config import Config
    from mmseg.apis import inference_model, init_model

    import mmseg_actcomp  # noqa: F401  (the configs name the plugin's types)
    cfg = Config.fromfile(args.config)
    cfg.custom_hooks = []  # inference needs the trained weights only
    items = val_items(cfg, args.num_images)
    if not items:
        raise SystemExit(f'{args.config}: its val split has no image with an object to show')
    colours = voc_colours(cfg.model.decode_head.num_classes)
    rows = [[np.asarray(Image.open(image).convert('RGB')), colours[label]] for image, label in items]
    for checkpoint in args.checkpoints:
        model = init_model(cfg, checkpoint, device='cpu')
        for row, (image, _) in zip(rows, items):
            row.append(colours[inference_model(model, image).pred_sem_seg.data[0].numpy()])
    titles = ['image', 'ground truth'] + (args.titles or [osp.basename(c) for c in args.checkpoints])
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    draw(rows, titles, args.out)
    print(f'predictions of {len(args.checkpoints)} checkpoints on {len(items)} val images: {args.out}')


if __name__ == '__main__':
    main()
