"""ActivationCompressionHook: layer choice, freezing, errors, and real training runs with mmseg's
packaged tools/train.py (single process, DDP on 2 gloo processes, bf16 AMP, resume, test.py)."""
import copy
import glob
import os.path as osp
import re
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from torch import nn

from conftest import REPO, SEGMENTER, build_model_from_config, mmseg_config, run_tool
from mmseg_actcomp import ActivationCompressionHook, HOSVDConv2d, HOSVDLinear, SVDConv2d
from mmseg_actcomp.ops.convert import trace_layer_order

SAMPLE = osp.join(REPO, 'configs', 'sample')
MODELS = {'deeplabv3': 'deeplabv3_r18-d8', 'pspnet': 'pspnet_r18-d8', 'fcn': 'fcn_r18-d8',
          'upernet': 'upernet_r18'}
TWO_ITERS = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
             'default_hooks.logger.interval=1']


def sample_config(arch, variant=''):
    return osp.join(SAMPLE, f'{arch}_{variant + "_" if variant else ""}1xb2-20it_vocsample-128x128.py')


def mmseg_train_py():
    import mmseg
    return osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'train.py')


def initial_checkpoint(arch, path):
    """A stock mmseg checkpoint of the vanilla sample model (random init, seeded)."""
    torch.manual_seed(0)
    _, model = build_model_from_config(sample_config(arch))
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return model.state_dict()


def region_keys(model_paths, state_dict, model):
    """State-dict keys of the chosen convs and of the norms of their ConvModules."""
    from mmcv.cnn import ConvModule
    prefixes = []
    for p in model_paths:
        prefixes.append(p + '.')
        parent, _, leaf = p.rpartition('.')
        if leaf == 'conv' and isinstance(model.get_submodule(parent), ConvModule) and \
                model.get_submodule(parent).with_norm:
            prefixes.append(f'{parent}.{model.get_submodule(parent).norm_name}.')
    return {k for k in state_dict if k.startswith(tuple(prefixes))}


# --------------------------------------------------------------------------- unit: choice and freezing
@pytest.fixture(scope='module')
def deeplab():
    cfg, model = build_model_from_config(sample_config('deeplabv3_r18-d8'))
    return model


def test_trace_follows_forward_not_registration_order():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Conv2d(4, 4, 1)   # registered first, runs last
            self.early = nn.Conv2d(3, 4, 1)
            self.unused = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.late(self.early(x))
    net = Net()
    assert trace_layer_order(net, lambda: net(torch.zeros(1, 3, 4, 4))) == ['early', 'late']


def test_num_layers_takes_last_convs_of_the_inference_forward(deeplab):
    import copy
    model = copy.deepcopy(deeplab)
    hook = ActivationCompressionHook(method='svd', explained_variance=0.9, num_layers=3)
    paths = hook.region.apply(model)
    assert paths == ['decode_head.aspp_modules.3.conv', 'decode_head.bottleneck.conv', 'decode_head.conv_seg']
    for p in paths:
        conv = model.get_submodule(p)
        assert type(conv) is SVDConv2d and conv.explained_variance == 0.9 and conv.layer_name == p
    assert not any('auxiliary_head' in p for p in paths)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {'decode_head.aspp_modules.3.conv.weight', 'decode_head.aspp_modules.3.bn.weight',
                         'decode_head.aspp_modules.3.bn.bias', 'decode_head.bottleneck.conv.weight',
                         'decode_head.bottleneck.bn.weight', 'decode_head.bottleneck.bn.bias',
                         'decode_head.conv_seg.weight', 'decode_head.conv_seg.bias'}
    assert hook.region.apply(model) == paths  # idempotent
    assert type(model.get_submodule(paths[0])) is SVDConv2d


def test_swap_shares_parameters_and_state_dict_keys(deeplab):
    import copy
    model = copy.deepcopy(deeplab)
    before = model.state_dict(keep_vars=True)
    ActivationCompressionHook(method='hosvd', layers=['backbone.layer4.1.conv2', 'decode_head.conv_seg'],
                              freeze_others=False).region.apply(model)
    after = model.state_dict(keep_vars=True)
    assert list(before) == list(after)
    assert after['backbone.layer4.1.conv2.weight'] is before['backbone.layer4.1.conv2.weight']
    assert isinstance(model.backbone.layer4[1].conv2, HOSVDConv2d)
    assert all(p.requires_grad for p in model.parameters())  # freeze_others=False


def test_center_reaches_the_compressed_convs(deeplab):
    """Centred by default (what learns, docs/finetune.md); center=False is the paper's decomposition."""
    import copy
    for kwargs, expected in ((dict(), True), (dict(center=False), False)):
        model = copy.deepcopy(deeplab)
        hook = ActivationCompressionHook(method='svd', num_layers=2, **kwargs)
        hook.region.apply(model)
        assert model.decode_head.conv_seg.center is expected
        assert f'center={expected}' in hook.region.summary(model)
    assert ActivationCompressionHook(method='none', num_layers=2, center=True).region.center is False


def test_hosvd_keeps_the_batch_mode_whole_unless_told_and_svd_always_truncates_it(deeplab):
    import copy
    for kwargs, expected in ((dict(), False), (dict(truncate_batch=True), True),
                             (dict(method='svd'), True), (dict(method='svd', truncate_batch=False), True)):
        model = copy.deepcopy(deeplab)
        hook = ActivationCompressionHook(num_layers=2, **kwargs)
        hook.region.apply(model)
        assert model.decode_head.conv_seg.truncate_batch is expected, kwargs
        assert f'truncate_batch={expected}' in hook.region.summary(model)
    # switching it on a swapped layer makes a new twin sharing the same parameters
    model = copy.deepcopy(deeplab)
    ActivationCompressionHook(num_layers=1).region.apply(model)
    weight = model.decode_head.conv_seg.weight
    ActivationCompressionHook(num_layers=1, truncate_batch=True).region.apply(model)
    assert model.decode_head.conv_seg.truncate_batch and model.decode_head.conv_seg.weight is weight


def test_summary_says_what_each_region_bn_normalises_with_and_keeps(deeplab):
    import copy
    cases = ((dict(), 'batch', 'its input in 2 bits per element (approximate gradients)'),
             (dict(norm_input_bits=None), 'batch', 'its input whole (exact input and affine gradients)'),
             (dict(norm_input_bits=4), 'batch', 'its input in 4 bits per element'),
             (dict(freeze_region_norm_stats=True, precise_norm_batches=4),
              'running, re-estimated over 4 batches at the start', 'x_hat for the gamma gradient, hosvd eps 0.9'))
    for kwargs, statistics, keeps in cases:
        model = copy.deepcopy(deeplab)
        hook = ActivationCompressionHook(num_layers=2, **kwargs)
        hook.region.apply(model)
        summary = hook.region.summary(model)
        row = [line for line in summary.splitlines() if line.startswith('decode_head.bottleneck.bn ')]
        assert len(row) == 1 and statistics in row[0] and keeps in row[0], row


def test_method_none_keeps_plain_convs(deeplab):
    import copy
    model = copy.deepcopy(deeplab)
    ActivationCompressionHook(method='none', num_layers=2).region.apply(model)
    assert type(model.decode_head.conv_seg) is nn.Conv2d
    assert model.decode_head.conv_seg.weight.requires_grad
    assert not model.backbone.layer1[0].conv1.weight.requires_grad


def test_method_gradfilt_swaps_in_gradient_filters_and_trains(deeplab):
    """The chosen convs become GradFilterConv2d with the hook's patch_size (center ignored, as for 'none'),
    the summary and the logged figures say what they keep, a training step's gradients reach them, and
    re-applying with another patch size updates the same layers."""
    import copy
    from mmseg_actcomp.ops import GradFilterConv2d
    model = copy.deepcopy(deeplab)
    hook = ActivationCompressionHook(method='gradfilt', patch_size=4, num_layers=3, freeze_region_norm_stats=True)
    paths = hook.region.apply(model)
    assert paths == ['decode_head.aspp_modules.3.conv', 'decode_head.bottleneck.conv', 'decode_head.conv_seg']
    layers = [model.get_submodule(p) for p in paths]
    assert all(type(m) is GradFilterConv2d and m.patch_size == 4 and m.layer_name == p
               for p, m in zip(paths, layers))
    assert hook.region.center is False and hook.region.lean_region
    # a trainable-gamma BN on running statistics keeps x_hat whole: the filter has no decomposition to lend
    assert model.decode_head.bottleneck.bn.method == 'none'
    summary = hook.region.summary(model)
    assert summary.startswith('method=gradfilt, patch_size=4, 3 layers') and 'center=False' in summary
    assert [line.split()[-1] for line in summary.splitlines()[1:5]] == ['patch_size', '4', '4', '4']
    bn_row = next(line for line in summary.splitlines() if line.startswith('decode_head.bottleneck.bn '))
    assert 'x_hat whole for the gamma gradient' in bn_row
    assert hook.region.stats() is None
    model.train()
    hook.region.set_norms_eval()
    model(torch.rand(2, 3, 64, 64), mode='tensor').sum().backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in layers)
    stats = hook.region.stats()
    assert set(stats) == {'kept_MiB', 'vanilla_MiB', 'kept_ratio'}
    assert stats['kept_MiB'] == sum(m.last_kept_bytes for m in layers) / 2**20
    # 64x64 images, output stride 8: 8x8 maps, 2x2 patches of 4x4 (the 1x1 stride-1 classifier too)
    assert stats['kept_ratio'] == pytest.approx(1 / 16)
    again = ActivationCompressionHook(method='gradfilt', patch_size=2, layers=paths)
    assert again.region.apply(model) == paths and [model.get_submodule(p) for p in paths] == layers
    assert all(m.patch_size == 2 for m in layers)


@pytest.mark.parametrize('kwargs, message', [
    (dict(method='tucker', num_layers=2),
     "method='tucker' is not allowed; use one of ['gradfilt', 'hosvd', 'none', 'svd']"),
    (dict(method='gradfilt', num_layers=2, patch_size=0), 'patch_size=0 must be an integer >= 1'),
    (dict(method='gradfilt', num_layers=2, patch_size=2.0), 'patch_size=2.0 must be an integer >= 1'),
    (dict(method='gradfilt', num_layers=2, memory_budget_mib=1.0),
     "memory_budget_mib=1.0 chooses explained_variance per layer: it needs method='svd' or 'hosvd', not "
     "'gradfilt'"),
    (dict(explained_variance=0.0, num_layers=2), 'explained_variance must be a real number in (0, 1], got 0.0'),
    (dict(explained_variance=1.5, num_layers=2), 'got 1.5'),
    (dict(num_layers=0), 'num_layers=0 must be an integer >= 1'),
    (dict(num_layers=2, norm_input_bits=16),
     'norm_input_bits=16 must be one of [1, 2, 4, 8], or None to keep region BN and LayerNorm inputs whole'),
    (dict(num_layers=2, norm_input_bits='8'), "norm_input_bits='8' must be one of"),
    (dict(num_layers=2, gelu_bits=3),
     'gelu_bits=3 must be one of [1, 2, 4, 8], or None to keep region GELU inputs whole'),
    (dict(num_layers=2, gelu_bits=True), 'gelu_bits=True must be one of'),
    (dict(num_layers=2.5), 'num_layers=2.5 must be an integer >= 1'),
    (dict(), 'give exactly one of num_layers=N and layers=[paths]'),
    (dict(num_layers=2, layers=['decode_head.conv_seg']), 'give exactly one of'),
    (dict(layers='decode_head.conv_seg'), 'must be a non-empty list of module paths'),
    (dict(layers=['a', 'a']), 'names a layer twice'),
    (dict(num_layers=2, center='yes'), "center='yes' must be True or False"),
    (dict(num_layers=2, truncate_batch=None), 'truncate_batch=None must be True or False'),
    (dict(num_layers=2, precise_norm_batches=-1), 'precise_norm_batches=-1 must be an integer >= 0'),
    (dict(num_layers=2, precise_norm_batches=8), 'precise_norm_batches=8 re-estimates the statistics of BNs '
                                                 'that run on them: it needs freeze_region_norm_stats=True'),
])
def test_bad_values_name_key_value_and_allowed(kwargs, message):
    with pytest.raises(ValueError) as e:
        ActivationCompressionHook(**kwargs)
    assert message in str(e.value)


def test_too_many_layers_and_non_conv_paths(deeplab):
    with pytest.raises(ValueError, match=r'num_layers=500 but the model runs 29 convolutions, linear layers and '
                                         r'attention projections \(nn.Conv2d, nn.Linear, AttentionProjection\) in '
                                         r'its forward pass: choose 1 <= num_layers <= 29'):
        ActivationCompressionHook(num_layers=500).region.apply(deeplab)
    with pytest.raises(ValueError, match=r"'decode_head.bottleneck' is a ConvModule, not one of the convolutions, "
                                         r"linear layers and attention projections .* the layers inside it are .*"
                                         r"'decode_head.bottleneck.conv'"):
        ActivationCompressionHook(layers=['decode_head.bottleneck']).region.apply(deeplab)
    with pytest.raises(ValueError, match=r"'decode_head.nothing' is not a module of EncoderDecoder"):
        ActivationCompressionHook(layers=['decode_head.nothing']).region.apply(deeplab)


@pytest.mark.slow
def test_num_layers_on_a_transformer_chooses_its_linear_layers_and_trains_them():
    """Segmenter ViT-T: the last 5 layers of its inference forward are the mask head's linear layers, the
    last attention's output projection first; they become HOSVDLinear, a training step gives them non-zero
    weight gradients, and the state dict is a stock model's."""
    _, stock = build_model_from_config(mmseg_config(SEGMENTER))
    model = copy.deepcopy(stock)
    hook = ActivationCompressionHook(num_layers=5)
    paths = hook.region.apply(model)
    assert paths == ['decode_head.layers.1.attn.attn.out_proj', 'decode_head.layers.1.ffn.layers.0.0',
                     'decode_head.layers.1.ffn.layers.1', 'decode_head.patch_proj', 'decode_head.classes_proj']
    layers = [model.get_submodule(p) for p in paths]
    assert all(type(m) is HOSVDLinear and m.layer_name == p for p, m in zip(paths, layers))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f'{p}.{name}' for p, m in zip(paths, layers) for name, _ in m.named_parameters()}
    assert all(line.split()[2] == 'HOSVDLinear' for line in hook.region.summary(model).splitlines()[2:7])
    model.train()
    hook.region.set_norms_eval()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), mode='tensor').square().mean() \
        .backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in layers)
    assert all(m.last_input_shape[0] == 2 and len(m.last_ranks) == 3 for m in layers)  # (B, N, C) tokens
    assert 0 < hook.region.stats()['kept_ratio'] < 1
    optimizer.step()
    state = model.state_dict()
    assert list(state) == list(stock.state_dict())
    stock.load_state_dict(state, strict=True)
    assert torch.equal(stock.decode_head.patch_proj.weight, model.decode_head.patch_proj.weight)
    model.load_state_dict(copy.deepcopy(stock).state_dict(), strict=True)


def test_hook_given_twice_and_missing_checkpoint_fail_at_start(deeplab):
    import copy
    hooks = [ActivationCompressionHook(num_layers=1), ActivationCompressionHook(num_layers=2)]
    runner = SimpleNamespace(hooks=hooks, model=copy.deepcopy(deeplab), cfg=Config({}))
    with pytest.raises(ValueError, match='given 2 times in custom_hooks; give it once'):
        hooks[0].before_run(runner)
    hook = ActivationCompressionHook(num_layers=1, require_load_from=True)
    runner = SimpleNamespace(hooks=[hook], model=copy.deepcopy(deeplab), cfg=Config({'load_from': None}))
    with pytest.raises(ValueError, match='load_from is not set; add --cfg-options load_from=CHECKPOINT'):
        hook.before_run(runner)


# --------------------------------------------------------------------------- every config builds
ALL_CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', '*', '*.py')))
ALL_CONFIGS = [c for c in ALL_CONFIGS if '/_base_/' not in c]

PAPER_10L = {
    'deeplabv3_r18-d8': ['backbone.layer4.0.conv1', 'backbone.layer4.0.conv2', 'backbone.layer4.1.conv1',
                         'backbone.layer4.1.conv2', 'decode_head.aspp_modules.0.conv',
                         'decode_head.aspp_modules.1.conv', 'decode_head.aspp_modules.2.conv',
                         'decode_head.aspp_modules.3.conv', 'decode_head.bottleneck.conv', 'decode_head.conv_seg'],
    'deeplabv3_mv2-d8': ['backbone.layer6.2.conv.2.conv', 'backbone.layer7.0.conv.0.conv',
                         'backbone.layer7.0.conv.1.conv', 'backbone.layer7.0.conv.2.conv',
                         'decode_head.aspp_modules.0.conv', 'decode_head.aspp_modules.1.conv',
                         'decode_head.aspp_modules.2.conv', 'decode_head.aspp_modules.3.conv',
                         'decode_head.bottleneck.conv', 'decode_head.conv_seg'],
    # not in the paper: the last 10 traced convs, as its config comment lists them
    'fcn_mv2-d8': ['backbone.layer6.2.conv.0.conv', 'backbone.layer6.2.conv.1.conv', 'backbone.layer6.2.conv.2.conv',
                   'backbone.layer7.0.conv.0.conv', 'backbone.layer7.0.conv.1.conv', 'backbone.layer7.0.conv.2.conv',
                   'decode_head.convs.0.conv', 'decode_head.convs.1.conv', 'decode_head.conv_cat.conv',
                   'decode_head.conv_seg'],
    # the last MiT block's attention output projection and Mix-FFN convs: transformer layers are chosen
    'segformer_mit-b0': ['backbone.layers.3.1.1.attn.attn.out_proj', 'backbone.layers.3.1.1.ffn.layers.0',
                         'backbone.layers.3.1.1.ffn.layers.1', 'backbone.layers.3.1.1.ffn.layers.4',
                         'decode_head.convs.0.conv', 'decode_head.convs.1.conv', 'decode_head.convs.2.conv',
                         'decode_head.convs.3.conv', 'decode_head.fusion_conv.conv', 'decode_head.conv_seg'],
}


#: what a config's name says it fine-tunes: `_hosvd-0.8-10L_`, `_svd-0.8-5L_`, `_none-10L_`
CONFIG_NAME_HOOK = re.compile(r'_(?P<method>none|svd|hosvd)(?:-(?P<eps>[0-9.]+))?-(?P<count>[0-9]+)L_')


def assert_name_matches_hook(config, hooks):
    """A config named for a method, threshold and layer set has exactly that hook; a calibration config
    trains conv_seg alone and a head config the decode head alone, uncompressed; any other config (vanilla
    training) has no hook."""
    name = osp.basename(config)
    said = CONFIG_NAME_HOOK.search(name)
    stage = '_calib-conv_seg_' in name or '_head-source_' in name
    if said is None and not stage:
        assert hooks == [], f'{name} names no method but has {hooks}'
        return
    assert len(hooks) == 1, f'{name} must have exactly one ActivationCompressionHook, has {hooks}'
    hook = hooks[0]
    if said is None:
        assert hook['method'] == 'none', hook
        if '_calib-conv_seg_' in name:
            assert hook['layers'] == ['decode_head.conv_seg'], hook
        else:
            assert hook['layers'] and all(p.startswith('decode_head.') for p in hook['layers']), hook
        return
    assert hook.get('method', 'hosvd') == said['method'], (name, hook)
    if said['eps'] is not None:
        from mmseg_actcomp.hooks import default_options
        assert hook.get('explained_variance', default_options()['explained_variance']) == float(said['eps']), \
            (name, hook)
    count = int(said['count'])
    if hook.get('layers') is None:
        assert hook['num_layers'] == count, (name, hook)
    else:  # the paper's named layer sets: configs/_base_/layers/<model>.py's layers_<count>L
        arch = '_'.join(name.split('_')[:2])
        layer_sets = Config.fromfile(osp.join(REPO, 'configs', '_base_', 'layers', f'{arch}.py'))
        assert hook['layers'] == layer_sets[f'layers_{count}L'], (name, hook)


@pytest.mark.parametrize('name, hooks', [
    ('m_r18_hosvd-0.9-10L_1xb8.py', [dict(method='hosvd', explained_variance=0.8, num_layers=10)]),
    ('m_r18_svd-0.8-10L_1xb8.py', [dict(method='hosvd', explained_variance=0.8, num_layers=10)]),
    ('m_r18_hosvd-0.8-5L_1xb8.py', [dict(method='hosvd', explained_variance=0.8, num_layers=10)]),
    ('m_r18_none-10L_1xb8.py', []),
    ('m_r18_1xb8-20k.py', [dict(method='hosvd', num_layers=10)]),
    ('m_r18_calib-conv_seg_1k.py', [dict(method='none', layers=['decode_head.bottleneck.conv'])]),
])
def test_a_config_name_that_disagrees_with_its_hook_is_caught(name, hooks):
    with pytest.raises(AssertionError):
        assert_name_matches_hook(name, hooks)


@pytest.mark.slow
@pytest.mark.parametrize('config', ALL_CONFIGS, ids=lambda c: osp.relpath(c, osp.join(REPO, 'configs')))
def test_every_config_builds_and_its_layers_exist(config):
    from mmseg_actcomp.apis.checks import check_plugin_imports, check_types
    cfg, model = build_model_from_config(config)
    check_plugin_imports(cfg)  # no false alarm of the checks tools/train.py runs first
    check_types(cfg)
    from mmseg_actcomp.apis.checks import walk_dicts
    norms = {node['type'] for _, node in walk_dicts(cfg.model.to_dict()) if 'BN' in str(node.get('type'))}
    assert norms == {'BN'}, f'{config}: one CPU process or GPU needs plain BN, has {norms}'
    hooks = [h for h in cfg.get('custom_hooks', []) if h['type'] == 'ActivationCompressionHook']
    assert_name_matches_hook(config, hooks)
    if not hooks:
        return  # a vanilla training config: checked above that its name asks for no hook
    args = {k: v for k, v in hooks[0].items() if k != 'type'}
    hook = ActivationCompressionHook(**args)
    paths = hook.region.apply(model)
    assert len(paths) == (args.get('num_layers') or len(args['layers']))
    arch = osp.basename(config).split('_')[0] + '_' + osp.basename(config).split('_')[1]
    if '10L' in config and arch in PAPER_10L:
        assert paths == PAPER_10L[arch]
    if 'calib' in config:
        assert paths == ['decode_head.conv_seg']


# --------------------------------------------------------------------------- real training runs
def _changed_and_frozen(initial, trained, region):
    changed = {k for k in region if not torch.equal(initial[k], trained[k])}
    not_frozen = [k for k in initial if k not in region and not torch.equal(initial[k], trained[k])]
    return changed, not_frozen


@pytest.mark.slow
@pytest.mark.parametrize('algo', list(MODELS))
def test_stock_train_py_fine_tunes_only_the_chosen_layers(algo, sample_workspace, tmp_path):
    arch = MODELS[algo]
    initial = initial_checkpoint(arch, tmp_path / 'init.pth')
    work = tmp_path / 'work'
    out = run_tool([mmseg_train_py(), sample_config(arch, 'hosvd-0.8-10L'), '--work-dir', work,
                    '--cfg-options', f'load_from={tmp_path / "init.pth"}'] + TWO_ITERS, cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-5000:]
    assert 'ActivationCompressionHook: method=hosvd, explained_variance=0.8, ' in out.stdout
    ranks = re.findall(r'Iter\(train\) \[\d/2\].*actcomp_rank_mode1: ([\d.]+).*actcomp_kept_MiB: ([\d.]+)',
                       out.stdout)
    assert len(ranks) == 2 and all(float(r) >= 1 and float(b) > 0 for r, b in ranks)
    assert re.search(r'Iter\(val\) \[8/8\].*mIoU', out.stdout)

    from mmseg_actcomp.utils import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    trained = torch.load(work / 'iter_2.pth', map_location='cpu')['state_dict']  # weights_only=True
    assert list(trained) == list(initial)  # a stock mmseg state dict: no key changes
    cfg, stock = build_model_from_config(sample_config(arch))
    assert not any(isinstance(m, (HOSVDConv2d, SVDConv2d)) for m in stock.modules())
    stock.load_state_dict(trained, strict=True)
    hook_cfg = Config.fromfile(sample_config(arch, 'hosvd-0.8-10L')).custom_hooks[0]
    paths = ActivationCompressionHook(**{k: v for k, v in hook_cfg.items() if k != 'type'}).region.apply(stock)
    region = region_keys(paths, initial, stock)
    changed, not_frozen = _changed_and_frozen(initial, trained, region)
    assert not not_frozen, f'frozen tensors changed: {not_frozen[:5]}'
    assert {p + '.weight' for p in paths} <= changed, 'every fine-tuned conv weight must move'
    stock.eval()
    with torch.no_grad():
        assert stock(torch.rand(1, 3, 64, 64), None, mode='tensor').shape[1] == 21


@pytest.mark.slow
def test_resume_continues_with_compression_and_test_py_evaluates(sample_workspace, tmp_path):
    config = sample_config('deeplabv3_r18-d8', 'hosvd-0.8-10L')
    work = tmp_path / 'work'
    out = run_tool([mmseg_train_py(), config, '--work-dir', work, '--cfg-options'] + TWO_ITERS,
                   cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-3000:]
    out = run_tool([mmseg_train_py(), config, '--work-dir', work, '--resume', '--cfg-options',
                    'train_cfg.max_iters=3', 'train_cfg.val_interval=3', 'default_hooks.checkpoint.interval=3',
                    'default_hooks.logger.interval=1'], cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-3000:]
    assert 'resumed epoch: 0, iter: 2' in out.stdout
    assert re.search(r'Iter\(train\) \[3/3\].*actcomp_rank_mode1', out.stdout)
    import mmseg
    test_py = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'test.py')
    out = run_tool([test_py, sample_config('deeplabv3_r18-d8'), work / 'iter_3.pth', '--work-dir',
                    tmp_path / 'test'], cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-3000:]
    assert re.search(r'Iter\(test\) \[8/8\].*mIoU: [\d.]+', out.stdout)


@pytest.mark.slow
def test_precise_norm_stats_are_estimated_once_at_the_start_not_on_resume(sample_workspace, tmp_path):
    """freeze_region_norm_stats with precise_norm_batches: the region's trainable BNs get statistics
    averaged over training batches before the first step, keep them while training (running statistics),
    and a resumed run does not estimate them again; every frozen tensor stays as loaded."""
    arch = 'deeplabv3_r18-d8'
    initial = initial_checkpoint(arch, tmp_path / 'init.pth')
    precise = ['custom_hooks.0.freeze_region_norm_stats=True', 'custom_hooks.0.precise_norm_batches=2']
    work = tmp_path / 'work'
    out = run_tool([mmseg_train_py(), sample_config(arch, 'hosvd-0.8-10L'), '--work-dir', work, '--cfg-options',
                    f'load_from={tmp_path / "init.pth"}', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
                    'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1'] + precise,
                   cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-5000:]
    assert re.search(r'running statistics of the \d+ region BNs re-estimated over 2 training batches', out.stdout)
    from mmseg_actcomp.utils import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    first, second = (torch.load(work / f'iter_{i}.pth', map_location='cpu')['state_dict'] for i in (1, 2))
    _, model = build_model_from_config(sample_config(arch))
    hook_cfg = Config.fromfile(sample_config(arch, 'hosvd-0.8-10L')).custom_hooks[0]
    hook = ActivationCompressionHook(**{k: v for k, v in hook_cfg.items() if k != 'type'},
                                     freeze_region_norm_stats=True, precise_norm_batches=2)
    paths = hook.region.apply(model)
    region_norms = [k for k in region_keys(paths, initial, model) if k.endswith('running_mean')]
    assert region_norms and len(hook.region.region_norms) == len(region_norms)
    for key in region_norms:
        assert not torch.equal(first[key], initial[key]), key  # re-estimated before the first step
        assert torch.equal(first[key], second[key]), key  # then run on, never updated
    changed, not_frozen = _changed_and_frozen(initial, second, set(region_keys(paths, initial, model)))
    assert not not_frozen, f'frozen tensors changed: {not_frozen[:5]}'
    out = run_tool([mmseg_train_py(), sample_config(arch, 'hosvd-0.8-10L'), '--work-dir', work, '--resume',
                    '--cfg-options', 'train_cfg.max_iters=3', 'train_cfg.val_interval=3',
                    'default_hooks.checkpoint.interval=3'] + precise, cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-3000:]
    assert 'resumed epoch: 0, iter: 2' in out.stdout and 'region BNs re-estimated over' not in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize('arch, variant, frozen', [
    ('deeplabv3_r18-d8', 'hosvd-0.8-10L', 'backbone.layer1.0.conv1.weight'),
    # a transformer: compressed attention out_proj and Mix-FFN convs among the layers, LayerNorms in the region
    ('segformer_mit-b0', 'hosvd-10L', 'backbone.layers.3.1.1.attn.attn.in_proj_weight'),
])
def test_ddp_two_gloo_processes(sample_workspace, tmp_path, arch, variant, frozen):
    config = sample_config(arch, variant)
    initial = initial_checkpoint(arch, tmp_path / 'init.pth')
    out = run_tool(['-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29537',
                    osp.join(REPO, 'tests', 'helpers', 'dist_cpu_train.py'), config, '--launcher', 'pytorch',
                    '--work-dir', tmp_path / 'work', '--cfg-options', f'load_from={tmp_path / "init.pth"}',
                    'env_cfg.dist_cfg.backend=gloo', 'model_wrapper_cfg.type=MMDistributedDataParallel',
                    'model_wrapper_cfg.device_ids=None', 'train_cfg.max_iters=3', 'train_cfg.val_interval=3',
                    'default_hooks.checkpoint.interval=3', 'default_hooks.logger.interval=1'],
                   cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-5000:]
    assert 'Distributed training: True' in out.stdout
    assert re.search(r'Iter\(train\) \[3/3\].*actcomp_rank_mode1', out.stdout)
    trained = torch.load(tmp_path / 'work' / 'iter_3.pth', map_location='cpu', weights_only=False)['state_dict']
    assert torch.equal(trained[frozen], initial[frozen])
    assert not torch.equal(trained['decode_head.conv_seg.weight'], initial['decode_head.conv_seg.weight'])


@pytest.mark.slow
def test_bf16_amp_on_cpu(sample_workspace, tmp_path):
    config = sample_config('deeplabv3_r18-d8', 'hosvd-0.8-10L')
    out = run_tool([osp.join(REPO, 'tests', 'helpers', 'cpu_amp_train.py'), config, '--work-dir', tmp_path / 'w',
                    '--cfg-options', 'optim_wrapper.type=AmpOptimWrapper', 'optim_wrapper.dtype=bfloat16']
                   + TWO_ITERS, cwd=sample_workspace)
    assert out.returncode == 0, out.stdout[-5000:]
    assert 'AmpOptimWrapper' in out.stdout
    logged = re.findall(r'Iter\(train\) \[\d/2\].*loss: ([\d.naif]+).*actcomp_kept_MiB: ([\d.]+)'
                        r'.*actcomp_vanilla_MiB: ([\d.]+)', out.stdout)
    assert len(logged) == 2
    for loss, kept, vanilla in logged:
        assert torch.isfinite(torch.tensor(float(loss))) and float(kept) > 0
    # The 10 layers' inputs at batch 2, crop 128 (16x16 maps after the d8 backbone), counted at 2 bytes
    # per element since autocast feeds the convs bf16: layer4.0.conv1 256 channels; layer4.0.conv2,
    # layer4.1.conv1/conv2 and the 4 ASPP branches 512; bottleneck 640; conv_seg 128.
    elements = 2 * 16 * 16 * (256 + 7 * 512 + 640 + 128)
    assert float(logged[0][2]) == pytest.approx(elements * 2 / 2**20, abs=1e-3)


@pytest.mark.slow
def test_bad_hook_value_via_train_py_is_a_clear_error(tmp_path):
    out = run_tool([osp.join(REPO, 'tools', 'train.py'), sample_config('deeplabv3_r18-d8', 'hosvd-0.8-10L'),
                    '--work-dir', tmp_path / 'w', '--cfg-options', 'custom_hooks.0.method=tucker'], cwd=tmp_path)
    assert out.returncode == 1
    assert "error: " in out.stdout
    assert "method='tucker' is not allowed; use one of ['gradfilt', 'hosvd', 'none', 'svd']" in out.stdout
    assert 'Traceback' not in out.stdout


def test_a_model_whose_inference_cannot_be_traced_says_to_give_layers():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            raise RuntimeError(f'no {mode} mode here')

    with pytest.raises(ValueError, match=r"cannot trace .* \(give layers=\[\.\.\.\] instead\): "
                                         r"mode='tensor' at 128x128: RuntimeError: no tensor mode here; "
                                         r"mode='predict' at 128x128"):
        ActivationCompressionHook(num_layers=1).region.apply(Untraceable())


@pytest.mark.parametrize('subspace', ['warm', 'frozen'])
def test_subspace_bases_go_into_checkpoints_and_a_resumed_run_continues_identically(deeplab, subspace):
    """subspace='warm'/'frozen': the hook saves each layer's bases in the checkpoint and restores them on
    load, so the resumed run's next step decomposes as the uninterrupted one's does (same ranks, same
    weight gradients); a fresh run has no state of its own to save."""
    import copy
    from mmseg_actcomp.hooks.activation_compression_hook import SUBSPACES_KEY

    def step(model, hook, seed):
        model.train()
        hook.region.set_norms_eval()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # the same dropout masks in both runs
        image = torch.rand(2, 3, 64, 64)
        model(image, mode='tensor').sum().backward()
        return {p: (model.get_submodule(p).last_ranks, model.get_submodule(p).weight.grad.clone())
                for p in hook.region.layer_paths}

    model = copy.deepcopy(deeplab)
    hook = ActivationCompressionHook(num_layers=2, subspace=subspace, subspace_batches=1 if subspace == 'frozen'
                                     else 5)
    paths = hook.region.apply(model)
    step(model, hook, seed=0)
    checkpoint = {}
    hook.before_save_checkpoint(None, checkpoint)
    saved = checkpoint[SUBSPACES_KEY]
    assert sorted(saved) == sorted(paths) and all(sorted(s['bases']) == [1, 2, 3] for s in saved.values())
    resumed = copy.deepcopy(deeplab)
    other = ActivationCompressionHook(num_layers=2, subspace=subspace, subspace_batches=hook.region.subspace_batches)
    other.region.apply(resumed)
    assert other.region.subspace_states() == {}
    other.after_load_checkpoint(None, checkpoint)
    uninterrupted, continued = step(model, hook, seed=1), step(resumed, other, seed=1)
    for path in paths:
        assert continued[path][0] == uninterrupted[path][0]
        diff = (continued[path][1] - uninterrupted[path][1]).norm() / uninterrupted[path][1].norm()
        assert diff < 1e-5, (path, float(diff))
    with pytest.raises(ValueError, match='not fine-tuned here'):
        other.region.load_subspace_states({'backbone.stem.0': {}})
    empty = {}
    ActivationCompressionHook(num_layers=2).before_save_checkpoint(None, empty)  # exact: nothing saved
    assert empty == {}


@pytest.mark.parametrize('kwargs,message', [
    (dict(method='svd', subspace='frozen'), "subspace='frozen' needs method='hosvd'"),
    (dict(subspace='cold'), r"subspace='cold' is not one of \['exact', 'warm', 'frozen'\]"),
    (dict(method='svd', subspace='warm'), "subspace='warm' needs method='hosvd'"),
    (dict(method='gradfilt', subspace='frozen'),
     r"subspace='frozen' needs method='hosvd' \('gradfilt' keeps patch sums of its input, no decomposition\)"),
    (dict(subspace='frozen', subspace_batches=0), 'subspace_batches=0'),
])
def test_bad_subspace_keys_are_named(kwargs, message):
    with pytest.raises(ValueError, match='ActivationCompressionHook: ' + message):
        ActivationCompressionHook(num_layers=2, **kwargs)
