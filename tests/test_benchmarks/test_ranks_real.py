"""benchmarks/ranks_real.py on a tiny crop: table structure, rank bounds, and the missing-weights exit."""
import os.path as osp
import runpy
from types import SimpleNamespace

import pytest

from conftest import REPO, load_script

CROP, EPS = 64, 0.8
# The script's functions, as a namespace (benchmarks/ is not a package).
ranks_real = SimpleNamespace(**runpy.run_path(osp.join(REPO, 'benchmarks', 'ranks_real.py'),
                                              run_name='ranks_real'))


@pytest.fixture(scope='module')
def backbone_weights(tmp_path_factory):
    """The converted ImageNet MobileNetV2 backbone, written from the weights package (skip without it)."""
    converter = load_script('tools/model_converters/mobilenetv2_torchvision2mmseg.py')
    try:
        converter.find_torchvision_mobilenet_v2_checkpoint()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f'weights package missing: {exc}')
    dst = str(tmp_path_factory.mktemp('pretrained') / 'mobilenet_v2_imagenet.pth')
    converter.convert_checkpoint_file(None, dst)
    return dst


@pytest.fixture(scope='module')
def sample_root(request):
    """The repository's data/sample_voc, or a fresh one when it has not been written."""
    root = osp.join(REPO, 'data', 'sample_voc')
    if osp.isfile(osp.join(root, 'VOCdevkit', 'VOC2012', 'ImageSets', 'Segmentation', 'train.txt')):
        return root
    return str(request.getfixturevalue('sample_workspace') / 'data' / 'sample_voc')


@pytest.fixture(scope='module')
def result(backbone_weights, sample_root):
    import torch
    torch.set_num_threads(1)
    return ranks_real.rank_tables(osp.join(REPO, ranks_real.DEFAULT_CONFIG), eps=(EPS,), crop=CROP,
                                  batch_size=2, sample_root=sample_root, checkpoint=backbone_weights)


@pytest.mark.slow
def test_tables_have_every_layer_for_both_networks(result):
    assert set(result['sources']) == {'photo', 'sample'}
    assert result['sources']['photo']['batch_shape'] == [1, 3, CROP, CROP]
    assert result['sources']['sample']['batch_shape'] == [2, 3, CROP, CROP]
    for source in result['sources'].values():
        assert list(source['eps']) == [EPS]
        rows = source['eps'][EPS]['rows']
        assert len(rows) == 10  # the paper's 10L set
        for row in rows:
            assert set(ranks_real.NETWORKS) <= set(row)
        table = ranks_real.markdown_table(rows, source['eps'][EPS]['totals'])
        assert len(table.splitlines()) == 2 + len(rows) + 1  # header, rule, layers, total
    assert len(ranks_real.summary_lines(result)) == 1


def test_ranks_within_mode_sizes_and_bytes_below_vanilla(result):
    for source in result['sources'].values():
        for row in source['eps'][EPS]['rows']:
            for network in ranks_real.NETWORKS:
                layer = row[network]
                assert layer['type'] == 'HOSVDConv2d'
                assert len(layer['ranks']) == len(layer['input_shape']) == 4
                assert all(1 <= r <= n for r, n in zip(layer['ranks'], layer['input_shape'])), (row['path'],
                                                                                              layer)
                assert 0 < layer['kept_bytes'] <= layer['vanilla_bytes']


def test_only_the_backbone_differs(backbone_weights):
    import torch
    from mmseg_actcomp.apis.segmentor import load_config
    cfg = load_config(osp.join(REPO, ranks_real.DEFAULT_CONFIG))
    cfg.model.data_preprocessor.size = (CROP, CROP)
    nets = ranks_real.build_networks(cfg, backbone_weights, seed=0)
    pre, rnd = (nets[n][0].state_dict() for n in ranks_real.NETWORKS)
    assert pre.keys() == rnd.keys()
    heads = [k for k in pre if not k.startswith('backbone.')]
    convs = [k for k in pre if k.startswith('backbone.') and k.endswith('conv.weight')]
    assert heads and all(torch.equal(pre[k], rnd[k]) for k in heads)
    assert convs and not any(torch.equal(pre[k], rnd[k]) for k in convs)


def test_missing_weights_exit_with_the_command(tmp_path):
    from mmseg_actcomp.apis.segmentor import load_config
    cfg = load_config(osp.join(REPO, ranks_real.DEFAULT_CONFIG))
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'absent.pth')
    with pytest.raises(ranks_real.MissingInput, match='mobilenetv2_torchvision2mmseg.py'):
        ranks_real.backbone_checkpoint(cfg)
