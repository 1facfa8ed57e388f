"""Tests of mmseg_actcomp.ops.lean.make: make_lean on mmseg's ResNet BasicBlock and an mmcv ConvModule ASPP
branch, whose saved bytes must equal exactly the compressed factors plus the packed masks, and on the hook's
region of real segmentors; and the ops it leaves alone because they keep nothing full-size anyway."""
import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmseg.models.backbones.resnet import BasicBlock
from torch import nn

from mmseg_actcomp.memory import measure_step
from mmseg_actcomp.ops import (HOSVDConv2d, LeanBatchNorm2d, LeanGELU, LeanLayerNorm, PackedMaskReLU,
                               RegeneratedDropout, make_lean)
from conftest import low_rank_activation, saved_tensors
from .common import randomize_bn, run_grads, saved_bytes

pytestmark = pytest.mark.usefixtures('single_thread')


# --- ops that keep nothing full-size anyway ------------------------------------------------------------


def test_residual_add_concat_and_resize_keep_nothing():
    leaf = torch.randn(2, 3, 8, 8, requires_grad=True)

    def ops():
        y = leaf * 2
        y += y.clone()
        pooled = F.adaptive_avg_pool2d(y, 1)
        z = torch.cat([y, F.interpolate(pooled, size=(8, 8), mode='bilinear', align_corners=False)], 1)
        return F.interpolate(z, scale_factor=2, mode='bilinear', align_corners=False)

    out, saved = saved_tensors(ops)
    assert saved == [] and out.shape == (2, 6, 16, 16)


# --- make_lean ------------------------------------------------------------------------------------------


def basic_block(inplanes=16, planes=24, dtype=torch.float32):
    """mmseg's BasicBlock with a downsample, BN frozen in eval mode (as ``norm_eval`` leaves it)."""
    torch.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes))
    block = BasicBlock(inplanes, planes, dilation=2, downsample=downsample).to(dtype)
    randomize_bn(block)
    for module in block.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    for name, p in block.named_parameters():
        p.requires_grad_(name in ('conv1.weight', 'conv2.weight'))
    return block


def aspp_branch(in_channels=512, channels=128, dtype=torch.float32):
    """An ASPP branch as DeepLabV3 builds it; BN with running statistics and trainable affine."""
    torch.manual_seed(0)
    module = ConvModule(in_channels, channels, 3, padding=12, dilation=12, norm_cfg=dict(type='BN'),
                        act_cfg=dict(type='ReLU')).to(dtype)
    randomize_bn(module)
    module.bn.eval()
    return module


def compress_convs(model, paths, eps):
    for path in paths:
        model.set_submodule(path, HOSVDConv2d.from_conv(model.get_submodule(path), eps))
    return model


def lean_basic_block(eps, dtype=torch.float32):
    return make_lean_copy(compress_convs(basic_block(dtype=dtype), ['conv1', 'conv2'], eps), eps)


def lean_aspp_branch(eps, dtype=torch.float32, **sizes):
    return make_lean_copy(compress_convs(aspp_branch(dtype=dtype, **sizes), ['conv'], eps), eps)


def make_lean_copy(model, eps):
    lean = copy.deepcopy(model)
    make_lean(lean, eps, 'hosvd')
    return lean


def assert_ranks_truncated(layer, shape):
    """Realistic input: some mode keeps more than one component, some fewer than all (centred, the
    batch mode of a small batch can keep all: its mean plus the rest's components)."""
    assert max(layer.last_ranks) > 1 and any(r < size for r, size in zip(layer.last_ranks, shape))
    assert all(r <= size for r, size in zip(layer.last_ranks, shape))


def test_basic_block_keeps_exactly_the_factors_and_the_packed_masks():
    lean = lean_basic_block(0.8)
    x = low_rank_activation((4, 16, 24, 24), components=12, noise=0.5).requires_grad_()
    total, per_op = saved_bytes(lean, x)
    out_numel = 4 * 24 * 24 * 24
    masks = 2 * math.ceil(out_numel / 8)  # the block calls its one ReLU twice
    assert total == lean.conv1.last_kept_bytes + lean.conv2.last_kept_bytes + masks
    assert set(per_op) == {'CompressedConv2dFunctionBackward', 'PackedMaskReLUFunctionBackward'}
    assert per_op['PackedMaskReLUFunctionBackward'] == masks
    assert_ranks_truncated(lean.conv1, (4, 16, 24, 24))
    assert_ranks_truncated(lean.conv2, (4, 24, 24, 24))
    stock, _ = saved_bytes(basic_block(), x)
    assert total < stock / 20


def test_aspp_branch_keeps_exactly_the_factors_the_normalised_input_and_the_mask():
    lean = lean_aspp_branch(0.8)
    x = low_rank_activation((4, 512, 20, 20), components=32, noise=0.5).requires_grad_()
    total, per_op = saved_bytes(lean, x)
    mask = math.ceil(4 * 128 * 20 * 20 / 8)
    assert isinstance(lean.bn, LeanBatchNorm2d) and lean.norm is lean.bn
    assert isinstance(lean.activate, PackedMaskReLU) and lean.activate.inplace
    assert total == lean.conv.last_kept_bytes + lean.bn.last_kept_bytes + mask
    assert set(per_op) == {'CompressedConv2dFunctionBackward', 'RunningStatsBatchNormFunctionBackward',
                           'PackedMaskReLUFunctionBackward'}
    assert_ranks_truncated(lean.conv, x.shape)
    assert_ranks_truncated(lean.bn, (4, 128, 20, 20))
    stock, _ = saved_bytes(aspp_branch(), x)
    assert total < stock / 20


def assert_same_gradients(grads, expected, exact_only=None):
    names = exact_only or expected
    assert set(grads) == set(expected)
    for name in names:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-9, atol=1e-11)


def test_basic_block_gradients_equal_vanilla():
    x = low_rank_activation((2, 16, 10, 9), components=8, dtype=torch.float64)
    vanilla = basic_block(dtype=torch.float64)
    expected_out, expected = run_grads(vanilla, x)
    out, grads = run_grads(lean_basic_block(1.0, torch.float64), x)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    assert_same_gradients(grads, expected)
    assert list(grads) == ['input', 'conv1.weight', 'conv2.weight']
    _, grads = run_grads(lean_basic_block(0.8, torch.float64), x)
    assert_same_gradients(grads, expected, exact_only=['input'])
    assert not torch.allclose(grads['conv1.weight'], expected['conv1.weight'])


def test_aspp_branch_gradients_equal_vanilla():
    sizes = dict(in_channels=24, channels=16)
    x = low_rank_activation((2, 24, 14, 13), components=8, dtype=torch.float64)
    vanilla = aspp_branch(dtype=torch.float64, **sizes)
    expected_out, expected = run_grads(vanilla, x)
    out, grads = run_grads(lean_aspp_branch(1.0, torch.float64, **sizes), x)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    assert list(grads) == ['input', 'conv.weight', 'bn.weight', 'bn.bias']  # no conv bias before BN
    assert_same_gradients(grads, expected)
    _, grads = run_grads(lean_aspp_branch(0.8, torch.float64, **sizes), x)
    assert_same_gradients(grads, expected, exact_only=['input', 'bn.bias'])
    assert not torch.allclose(grads['bn.weight'], expected['bn.weight'])


def test_make_lean_keeps_state_dict_parameters_and_is_idempotent():
    block = compress_convs(basic_block(), ['conv1', 'conv2'], 0.8)
    keys, params = list(block.state_dict()), list(block.parameters())
    lean = make_lean(block, 0.8, 'hosvd')
    assert sorted(lean) == ['bn1', 'bn2', 'downsample.0', 'downsample.1', 'relu']
    assert list(block.state_dict()) == keys
    assert all(a is b for a, b in zip(block.parameters(), params))
    assert block.norm1 is lean['bn1'] and isinstance(block.conv1, HOSVDConv2d)
    modules = list(block.modules())
    again = make_lean(block, 0.8, 'hosvd')
    assert again == lean and list(block.modules()) == modules
    make_lean(block, 0.5, 'svd')
    assert (block.bn1.explained_variance, block.bn1.method) == (0.5, 'svd')


def test_make_lean_on_a_decode_head_like_tree():
    shared_relu = nn.ReLU()
    head = nn.Sequential(ConvModule(8, 4, 3, padding=1, norm_cfg=dict(type='BN')), nn.Dropout2d(0.1),
                         nn.Sequential(nn.ReLU6(inplace=True), shared_relu), shared_relu,
                         nn.Conv2d(4, 3, 1))
    keys = list(head.state_dict())
    lean = make_lean(head, 0.8, 'none')
    assert list(head.state_dict()) == keys
    assert type(head[1]) is RegeneratedDropout and head[1].channelwise
    assert head[2][0].max_value == 6.0 and head[2][0].inplace
    assert head[2][1] is head[3] and type(head[3]) is PackedMaskReLU
    assert sorted(lean) == ['0.activate', '0.bn', '0.conv', '1', '2.0', '2.1', '3', '4']
    assert head(torch.randn(2, 8, 5, 5)).shape == (2, 3, 5, 5)


def test_make_lean_leaves_other_norms_and_the_root_alone():
    model = nn.Sequential(nn.SyncBatchNorm(4), nn.GroupNorm(2, 4), nn.BatchNorm1d(4))
    with pytest.warns(UserWarning) as record:
        assert make_lean(model, 0.8, 'hosvd') == {}
    assert [str(w.message).split()[2] for w in record] == ['SyncBatchNorm', 'BatchNorm1d']
    assert [type(m) for m in model] == [nn.SyncBatchNorm, nn.GroupNorm, nn.BatchNorm1d]
    relu = nn.ReLU()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert make_lean(relu, 0.8, 'hosvd') == {}
    with pytest.raises(ValueError, match='method'):
        make_lean(model, 0.8, 'HOSVD')


# --- transformer regions ----------------------------------------------------------------------------------


def test_make_lean_on_mmcv_ffn_and_attention_takes_layer_norm_gelu_and_every_dropout():
    """mmcv's FFN and MultiheadAttention as mmseg's ViT builds them: GELU, nn.Dropout and mmcv's Dropout
    become lean, a LayerNorm shares its parameters with its twin, DropPath and nn.MultiheadAttention (whose
    internals are functional) stay; a second call updates the bits in place."""
    from mmcv.cnn.bricks.drop import DropPath
    from mmcv.cnn.bricks.transformer import FFN, MultiheadAttention
    layer = nn.ModuleDict(dict(
        ln=nn.LayerNorm(16),
        attn=MultiheadAttention(16, 2, attn_drop=0.1, proj_drop=0.1, batch_first=True,
                                dropout_layer=dict(type='Dropout', drop_prob=0.1)),
        ffn=FFN(16, 32, ffn_drop=0.1, act_cfg=dict(type='GELU'),
                dropout_layer=dict(type='DropPath', drop_prob=0.1))))
    keys, params = list(layer.state_dict()), list(layer.parameters())
    lean = make_lean(layer, 0.8, 'hosvd', input_bits=2, gelu_bits=4)
    assert sorted(lean) == ['attn.dropout_layer', 'attn.proj_drop', 'ffn.layers.0.1', 'ffn.layers.0.2',
                            'ffn.layers.2', 'ln']
    assert type(layer.ln) is LeanLayerNorm and layer.ln.input_bits == 2
    assert type(layer.ffn.layers[0][1]) is LeanGELU and layer.ffn.layers[0][1].derivative_bits == 4
    assert all(type(lean[p]) is RegeneratedDropout and lean[p].p == 0.1 for p in sorted(lean)[:2] + ['ffn.layers.2'])
    assert type(layer.ffn.dropout_layer) is DropPath and type(layer.attn.attn) is nn.MultiheadAttention
    assert list(layer.state_dict()) == keys and all(a is b for a, b in zip(layer.parameters(), params))
    assert make_lean(layer, 0.8, 'hosvd', input_bits=8, gelu_bits=None) == lean
    assert layer.ln.input_bits == 8 and layer.ffn.layers[0][1].derivative_bits is None
    with pytest.raises(ValueError, match=r'gelu_bits: bits=3 is not one of \[1, 2, 4, 8\]'):
        make_lean(layer, 0.8, 'hosvd', gelu_bits=3)


class PreNormBlock(nn.Module):
    """The MLP half of a pre-norm transformer block, mmcv's dropout and drop path included:
    ``x + DropPath(Linear(Dropout(GELU(Linear(LayerNorm(x))))))`` on ``(B, N, C)`` tokens."""

    def __init__(self, dim=32, hidden=128, p=0.1):
        from mmcv.cnn.bricks.drop import DropPath, Dropout
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop = Dropout(p)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(p)

    def forward(self, x):
        return x + self.drop_path(self.fc2(self.drop(self.act(self.fc1(self.norm(x))))))


def test_pre_norm_block_region_keeps_the_factors_the_lean_saves_and_the_drop_path_factor():
    """FineTuneRegion(num_layers=2) chooses the block's two linear layers; its region (the block) then keeps
    exactly their factors, the LayerNorm's 2-bit x_hat with its ranges and rstd, the GELU's 4-bit derivative
    with its ranges, and drop path's (B, 1, 1) factor: residual add, dropout and reshapes keep nothing."""
    from mmseg_actcomp.ops.region import FineTuneRegion
    from .common import token_activation
    torch.manual_seed(0)
    model = nn.Sequential(PreNormBlock())
    stock = copy.deepcopy(model)
    region = FineTuneRegion(num_layers=2)
    x = token_activation((4, 49, 32), outliers=2).requires_grad_()  # (B, N, C): upstream layers train
    paths = region.apply(model, lambda: model(x[:1]))
    assert paths == ['0.fc1', '0.fc2']
    block = model[0]
    assert (type(block.norm), type(block.act), type(block.drop)) == (LeanLayerNorm, LeanGELU, RegeneratedDropout)
    assert not block.norm.weight.requires_grad and block.fc1.weight.requires_grad
    summary = region.summary(model)
    assert 'norm_input_bits=2, gelu_bits=4' in summary.splitlines()[0]
    assert summary.splitlines()[-2:] == [
        'region norm  statistics  keeps for backward',
        '0.norm       per token   x_hat in 2 bits per element and rstd per token (approximate gradients)']
    model.train()
    torch.manual_seed(1)  # drop path keeps some samples and drops others
    step = measure_step(model, lambda: model(x).sum(), paths)
    tokens, hidden = 4 * 49, 4 * 49 * 128
    norm_bytes = math.ceil(tokens * 32 * 2 / 8) + 2 * 4 * 4 * 32 + 4 * tokens  # codes, (low, step), rstd
    gelu_bytes = math.ceil(hidden * 4 / 8) + 2 * 4 * 4  # codes, (low, step) per sample
    factors = block.fc1.last_kept_bytes + block.fc2.last_kept_bytes
    per_op = {op: row['bytes'] for op, row in step.saved['per_op']['region'].items()}
    assert per_op == {'CompressedLinearFunctionBackward': factors,
                      'QuantizedNormalisedLayerNormFunctionBackward': norm_bytes,
                      'QuantizedDerivativeGELUFunctionBackward': gelu_bytes,
                      'MulBackward0': 4 * 4}  # drop path: one float32 per sample
    assert step.saved['region'] == sum(per_op.values()) and step.saved['rest'] == 0
    stock.train()
    vanilla = measure_step(stock, lambda: stock(x).sum(), paths)
    stock_ops = vanilla.saved['per_op']['region']
    assert stock_ops['NativeLayerNormBackward0']['bytes'] == tokens * 32 * 4 + 2 * 4 * tokens  # input, mean, rstd
    assert stock_ops['GeluBackward0']['bytes'] == hidden * 4
    assert step.saved['region'] < vanilla.saved['region'] / 5


# --- integration prototype: the hook's region of a real segmentor ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize('config', [
    'deeplabv3_r18-d8_hosvd-0.8-10L_1xb2-20it', 'pspnet_r18-d8_hosvd-0.8-10L_1xb2-20it',
    'fcn_r18-d8_hosvd-0.8-10L_1xb2-20it', 'upernet_r18_hosvd-0.8-10L_1xb2-20it',
    'deeplabv3_mv2-d8_hosvd-0.8-10L_1xb4-40it'])
def test_lean_region_of_a_segmentor_keeps_only_factors_and_masks(config):
    """The hook (lean_region=True, its default, with freeze_region_norm_stats) on a sample 10-layer
    config: the region then keeps exactly the conv factors, the compressed x_hat of the trainable-gamma
    BNs and one packed mask per ReLU call."""
    from conftest import REPO, build_model_from_config
    from mmseg_actcomp.hooks import ActivationCompressionHook
    from mmseg_actcomp.memory import region_modules

    cfg, model = build_model_from_config(f'{REPO}/configs/sample/{config}_vocsample-128x128.py')
    hook = ActivationCompressionHook(**{k: v for k, v in cfg.custom_hooks[0].items() if k != 'type'},
                                     freeze_region_norm_stats=True)
    assert hook.region.lean_region
    paths = hook.region.apply(model)
    roots = [path for path in region_modules(paths) if path not in paths]
    assert 'decode_head' in roots
    lean = {f'{root}.{p}': m for root in roots for p, m in model.get_submodule(root).named_modules()
            if isinstance(m, (PackedMaskReLU, LeanBatchNorm2d))}
    model.train()
    hook.region.set_norms_eval()
    norms = [m for m in lean.values() if isinstance(m, LeanBatchNorm2d)]
    assert norms and not any(n.training for n in norms)
    mask_bytes = []
    for relu in {id(m): m for m in lean.values() if isinstance(m, PackedMaskReLU)}.values():
        relu.register_forward_hook(  # a ReLU on frozen features (e.g. UPerNet's laterals) keeps nothing
            lambda m, args, out: mask_bytes.append(math.ceil(out.numel() / 8) if out.requires_grad else 0))
    x = low_rank_activation((2, 3, 64, 64), components=12, noise=0.5)
    step = measure_step(model, lambda: model(x, mode='tensor').sum(), paths)
    convs = [hook.region.fine_tuned[p] for p in paths]
    trainable_norms = [n for n in norms if n.weight.requires_grad]
    assert trainable_norms and mask_bytes
    assert step.saved['region'] == (sum(c.last_kept_bytes for c in convs)
                                    + sum(n.last_kept_bytes for n in trainable_norms) + sum(mask_bytes))
    assert set(step.saved['per_op']['region']) == {
        'CompressedConv2dFunctionBackward', 'RunningStatsBatchNormFunctionBackward',
        'PackedMaskReLUFunctionBackward'}


@pytest.mark.slow
def test_region_bns_on_batch_statistics_keep_their_input_in_2_bits_by_default():
    """Without freeze_region_norm_stats the region's trainable BNs train on batch statistics, as the
    config says: they keep their input in 2 bits by default, a sixteenth of what stock BN keeps (the
    whole float32 input, as with norm_input_bits=None), while norm_eval BNs keep nothing."""
    from conftest import REPO, build_model_from_config
    from mmseg_actcomp.hooks import ActivationCompressionHook

    x = low_rank_activation((2, 3, 64, 64), components=12, noise=0.5)
    kept, whole = 'QuantizedInputBatchNormFunctionBackward', 'NativeBatchNormBackward0'
    region_bn = {}
    for norm_input_bits in ('default', None):
        cfg, model = build_model_from_config(
            f'{REPO}/configs/sample/deeplabv3_r18-d8_hosvd-0.8-10L_1xb2-20it_vocsample-128x128.py')
        options = {k: v for k, v in cfg.custom_hooks[0].items() if k != 'type'}
        assert 'norm_input_bits' not in options
        if norm_input_bits is None:
            options['norm_input_bits'] = None
        hook = ActivationCompressionHook(**options)
        paths = hook.region.apply(model)
        model.train()
        hook.region.set_norms_eval()
        assert model.decode_head.bottleneck.bn.training and not model.backbone.layer4[0].bn1.training
        step = measure_step(model, lambda: model(x, mode='tensor').sum(), paths)
        region = step.saved['per_op']['region']
        assert 'ReluBackward0' not in region
        assert (kept in region, whole in region) == ((True, False) if norm_input_bits else (False, True))
        region_bn[norm_input_bits] = region[kept if norm_input_bits else whole]
    # 2 bits for float32: a sixteenth, plus per BN its plane ranges and batch statistics (kilobytes)
    bytes_2, bytes_whole = region_bn['default']['bytes'], region_bn[None]['bytes']
    assert bytes_whole / 16 < bytes_2 < bytes_whole / 16 + region_bn[None]['saves'] * 16 * 1024


def test_segmenter_head_region_keeps_the_factors_the_lean_saves_and_what_attention_must():
    """mmseg's Segmenter ViT-T with 5 of the mask head's linear layers chosen (layer 0's fc2 on), so the region
    is the whole head. It keeps exactly the factors, its LayerNorms' 2-bit x_hat (ranges, rstd), its GELU's
    4-bit derivative, drop path's factor per sample, and what attention must keep whole: the softmax output
    (which its second product reads too) and the query, key and value of its products. No LayerNorm, GELU
    or dropout keeps a full-size tensor. (Layer 0 runs on frozen features: only its chosen fc2 keeps
    anything.)"""
    from conftest import SEGMENTER, build_model_from_config, mmseg_config
    from mmseg_actcomp.ops.region import FineTuneRegion

    _, model = build_model_from_config(mmseg_config(SEGMENTER))
    region = FineTuneRegion(layers=['decode_head.layers.0.ffn.layers.1', 'decode_head.layers.1.ffn.layers.0.0',
                                    'decode_head.layers.1.ffn.layers.1', 'decode_head.patch_proj',
                                    'decode_head.classes_proj'])
    paths = region.apply(model)
    head = model.decode_head
    norms = [m for m in head.modules() if isinstance(m, nn.LayerNorm)]
    gelus = [m for m in head.modules() if isinstance(m, nn.GELU)]
    assert len(norms) == 6 and all(type(m) is LeanLayerNorm and m.input_bits == 2 for m in norms)
    assert len(gelus) == 2 and all(type(m) is LeanGELU and m.derivative_bits == 4 for m in gelus)
    expected = {'QuantizedNormalisedLayerNormFunctionBackward': 0, 'QuantizedDerivativeGELUFunctionBackward': 0}

    def count(op, bits, ranges):
        def hook(module, args, out):
            if out.requires_grad:
                x, = args
                expected[op] += math.ceil(x.numel() * bits / 8) + ranges(x)
        return hook

    for norm in norms:  # codes; (low, step) per (sample, feature) and rstd per token, float32
        norm.register_forward_hook(count('QuantizedNormalisedLayerNormFunctionBackward', 2,
                                         lambda x: 8 * x.shape[0] * x.shape[-1] + 4 * x[..., 0].numel()))
    for gelu in gelus:  # codes; (low, step) per sample
        gelu.register_forward_hook(count('QuantizedDerivativeGELUFunctionBackward', 4, lambda x: 8 * x.shape[0]))
    model.train()
    region.set_norms_eval()
    batch, heads, head_dim = 2, 3, 64
    tokens = (64 // 16) ** 2 + head.num_classes  # patches of a 64x64 image, and the class embeddings
    x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    step = measure_step(model, lambda: model(x, mode='tensor').sum(), paths)
    per_op = step.saved['per_op']['region']
    assert set(per_op) == {'CompressedLinearFunctionBackward', 'QuantizedNormalisedLayerNormFunctionBackward',
                           'QuantizedDerivativeGELUFunctionBackward', 'SoftmaxBackward0', 'BmmBackward0',
                           'MulBackward0'}
    assert per_op['CompressedLinearFunctionBackward']['bytes'] == sum(
        region.fine_tuned[p].last_kept_bytes for p in paths)
    assert expected['QuantizedNormalisedLayerNormFunctionBackward'] > 0 and all(
        per_op[op]['bytes'] == expected[op] for op in expected)
    assert per_op['MulBackward0']['bytes'] == batch * 4  # drop path of layer 1
    # one attention (layer 1's) keeps its softmax output, and three (B heads, N, d) query, key, value tensors
    softmax = batch * heads * tokens * tokens * 4
    assert per_op['SoftmaxBackward0']['bytes'] == softmax
    assert per_op['BmmBackward0']['exclusive_bytes'] == 3 * batch * heads * tokens * head_dim * 4
    assert step.saved['region'] == sum(row['exclusive_bytes'] for row in per_op.values()) + softmax
