"""Tests of mmseg_actcomp.ops.gradfilt: the Gradient Filter convolution's gradients against a reference
written with explicit loops over patches, what it keeps, its layer API, other paths and registry."""
import copy
import math
import re

import pytest
import torch
from torch import nn

from mmseg_actcomp.ops import GradFilterConv2d
from conftest import assert_close_in_norm, non_parameter, saved_tensors

pytestmark = pytest.mark.usefixtures('single_thread')

PATCH_SIZES = (1, 2, 4)
# (conv arguments, input (H, W)); C = 4 unless said. Odd sizes, so that patch grids overhang or crop.
CASES = {
    '3x3': (dict(out_channels=6, kernel_size=3, padding=1), (7, 9)),
    '3x3-stride2': (dict(out_channels=6, kernel_size=3, stride=2, padding=1), (13, 11)),
    '3x3-pad0': (dict(out_channels=6, kernel_size=3), (7, 9)),  # the grid crops the input
    '3x3-stride2-pad0-nobias': (dict(out_channels=6, kernel_size=3, stride=2, bias=False), (7, 9)),
    '3x3-pad2': (dict(out_channels=6, kernel_size=3, padding=2), (13, 11)),
    '1x1': (dict(out_channels=6, kernel_size=1), (13, 11)),
    '1x1-stride2': (dict(out_channels=6, kernel_size=1, stride=2), (7, 9)),
    'dilated2': (dict(out_channels=6, kernel_size=3, padding=2, dilation=2), (13, 11)),
    'dilated2-pad0': (dict(out_channels=6, kernel_size=3, dilation=2), (7, 9)),
    'dilated4-groups2': (dict(out_channels=6, kernel_size=3, padding=4, dilation=4, groups=2), (13, 11)),
    'groups2-stride2': (dict(out_channels=6, kernel_size=3, stride=2, padding=1, groups=2), (13, 11)),
    'depthwise': (dict(out_channels=4, kernel_size=3, padding=1, groups=4), (7, 9)),
    'depthwise-x2-dilated2-stride2': (dict(out_channels=8, kernel_size=3, stride=2, padding=2, dilation=2,
                                           groups=4, bias=False), (13, 11)),
    'even-kernel-dilated2': (dict(out_channels=6, kernel_size=(2, 3), padding=(1, 2), dilation=2), (7, 9)),
    'mixed-dilation-1x4': (dict(out_channels=6, kernel_size=3, padding=(1, 4), dilation=(1, 4)), (13, 11)),
}


# --- the reference: the same formulas, written with loops over patches ----------------------------------


def _grid_start(size, block, patches):
    """First pixel (possibly negative) of a centred grid of ``patches`` blocks of ``block`` over ``size``."""
    return -math.ceil((patches * block - size) / 2)


def _patch_range(index, block, start, size):
    """Pixels ``[lo, hi)`` of patch ``index`` inside a plane of ``size``."""
    lo = start + index * block
    return max(lo, 0), min(lo + block, size)


def reference_gradients(x, weight, grad_output, stride, dilation, groups, patch_size):
    """Gradient Filter's (grad_x, grad_w, grad_b) in float64, patch by patch (see the issue's formulas)."""
    x, weight, gy = x.double(), weight.double(), grad_output.double()
    n, c_in, h, w = x.shape
    c_out, c_group, k_h, k_w = weight.shape
    o_group = c_out // groups
    _, _, h_out, w_out = gy.shape
    p_h, p_w = math.ceil(h_out / patch_size), math.ceil(w_out / patch_size)
    b_h, b_w = patch_size * stride[0], patch_size * stride[1]
    x_start = (_grid_start(h, b_h, p_h), _grid_start(w, b_w, p_w))
    g_start = (_grid_start(h_out, patch_size, p_h), _grid_start(w_out, patch_size, p_w))
    x_sum = torch.zeros(n, c_in, p_h, p_w, dtype=torch.float64)
    gy_avg = torch.zeros(n, c_out, p_h, p_w, dtype=torch.float64)
    for i in range(p_h):
        for j in range(p_w):
            (r0, r1), (c0, c1) = _patch_range(i, b_h, x_start[0], h), _patch_range(j, b_w, x_start[1], w)
            x_sum[:, :, i, j] = x[:, :, r0:r1, c0:c1].sum((2, 3))
            (r0, r1), (c0, c1) = (_patch_range(i, patch_size, g_start[0], h_out),
                                  _patch_range(j, patch_size, g_start[1], w_out))
            gy_avg[:, :, i, j] = gy[:, :, r0:r1, c0:c1].mean((2, 3))
    grad_w = torch.zeros_like(weight)
    for o in range(c_out):
        group = o // o_group
        inputs = x_sum[:, group * c_group:(group + 1) * c_group]
        grad_w[o] = (gy_avg[:, o, None] * inputs).sum((0, 2, 3))[:, None, None]
    # input gradient at the grid's resolution: per dimension, the taps' offsets on the grid (all 0 where
    # the taps fall in one patch and are summed)
    offsets = []
    for k, d in ((k_h, dilation[0]), (k_w, dilation[1])):
        d_grid = max(1, d // patch_size)
        spread = d > 1 and d >= patch_size and d_grid * (k - 1) % 2 == 0
        offsets.append([d_grid * (k - 1) // 2 - a * d_grid if spread else 0 for a in range(k)])
    grad_x_sum = torch.zeros_like(x_sum)
    for i in range(p_h):
        for j in range(p_w):
            for a in range(k_h):
                for b in range(k_w):
                    ii, jj = i + offsets[0][a], j + offsets[1][b]
                    if not (0 <= ii < p_h and 0 <= jj < p_w):
                        continue
                    for o in range(c_out):
                        group = o // o_group
                        grad_x_sum[:, group * c_group:(group + 1) * c_group, i, j] += (
                            weight[o, :, a, b] * gy_avg[:, o, ii, jj, None])
    grad_x = torch.zeros_like(x)
    for r in range(h):
        for c in range(w):
            i, j = (r - x_start[0]) // b_h, (c - x_start[1]) // b_w
            if 0 <= i < p_h and 0 <= j < p_w:
                grad_x[:, :, r, c] = grad_x_sum[:, :, i, j]
    return grad_x, grad_w, gy.sum((0, 2, 3))


def layer_gradients(layer, x, seed=1):
    """Output, a fixed random output gradient, and the layer's (grad_x, grad_w, grad_b or None)."""
    x = x.detach().requires_grad_()
    out = layer(x)
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    grads = torch.autograd.grad(out, [x] + params, grad_output)
    return out, grad_output, grads + (None,) * (3 - len(grads))


def make_pair(case, patch_size, dtype=torch.float64, seed=0, in_channels=4):
    torch.manual_seed(seed)
    conv = nn.Conv2d(in_channels, **case, dtype=dtype)
    return conv, GradFilterConv2d.from_conv(conv, patch_size)


# --- gradients ------------------------------------------------------------------------------------------


@pytest.mark.parametrize('patch_size', PATCH_SIZES)
@pytest.mark.parametrize('case, size', CASES.values(), ids=CASES.keys())
def test_gradients_equal_the_patch_by_patch_reference(case, size, patch_size):
    conv, layer = make_pair(case, patch_size)
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    out, grad_output, (grad_x, grad_w, grad_b) = layer_gradients(layer, x)
    assert torch.equal(out, conv(x))  # the forward is the exact convolution
    expected = reference_gradients(x, conv.weight.detach(), grad_output, layer.stride, layer.dilation,
                                   layer.groups, patch_size)
    torch.testing.assert_close(grad_x, expected[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_w, expected[1], rtol=1e-10, atol=1e-12)
    if grad_b is not None:
        torch.testing.assert_close(grad_b, expected[2], rtol=1e-10, atol=1e-12)


def test_the_reference_is_not_the_exact_gradient():
    """Guards the comparison above: on a 3x3 conv with 2x2 patches both weight and input gradients differ
    from the exact ones."""
    conv, layer = make_pair(CASES['3x3'][0], 2)
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    _, _, ours = layer_gradients(layer, x)
    _, _, exact = layer_gradients(conv, x)
    assert not torch.allclose(ours[0], exact[0]) and not torch.allclose(ours[1], exact[1])
    torch.testing.assert_close(ours[2], exact[2])


@pytest.mark.parametrize('case', [dict(out_channels=6, kernel_size=1), dict(out_channels=6, kernel_size=1, groups=2),
                                  dict(out_channels=4, kernel_size=1, groups=4, bias=False)],
                         ids=['1x1', '1x1-groups2', '1x1-depthwise'])
def test_patch_size_1_on_a_1x1_stride_1_conv_is_exact(case):
    conv, layer = make_pair(case, 1)
    x = torch.randn(3, 4, 7, 9, dtype=torch.float64)
    _, _, ours = layer_gradients(layer, x)
    _, _, exact = layer_gradients(conv, x)
    for mine, theirs in zip(ours, exact):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    params = [p.detach().clone().requires_grad_() for p in (layer.weight, layer.bias) if p is not None]

    def fn(x, *params):
        return torch.func.functional_call(layer, dict(zip([n for n, _ in layer.named_parameters()], params)), (x,))

    assert torch.autograd.gradcheck(fn, (x[:2, :, :3, :4].clone().requires_grad_(), *params))


# --- what it keeps --------------------------------------------------------------------------------------


@pytest.mark.parametrize('x_needs_grad', [True, False])
@pytest.mark.parametrize('case, size, patch_size, grid', [
    (CASES['3x3'][0], (7, 9), 2, (4, 5)),
    (CASES['3x3-stride2'][0], (13, 11), 4, (2, 2)),
    (CASES['dilated4-groups2'][0], (13, 11), 2, (7, 6)),
], ids=['3x3-R2', 'stride2-R4', 'dilated-R2'])
def test_keeps_only_the_patch_sums_and_the_weight(case, size, patch_size, grid, x_needs_grad):
    conv, layer = make_pair(case, patch_size, dtype=torch.float32)
    x = torch.randn(2, 4, *size).requires_grad_(x_needs_grad)
    out, saved = saved_tensors(lambda: layer(x))
    activations = non_parameter(saved, layer)
    assert [tuple(t.shape) for t in activations] == [(2, 4) + grid]
    # the weight itself (a Parameter, no activation memory) and only where the input needs a gradient
    assert [t is layer.weight for t in saved if t.data_ptr() == layer.weight.data_ptr()] == [True] * x_needs_grad
    assert len(saved) == 1 + x_needs_grad
    assert layer.last_kept_bytes == activations[0].numel() * 4 == 2 * 4 * math.prod(grid) * 4
    assert layer.last_vanilla_bytes == x.numel() * 4 and layer.last_input_shape == tuple(x.shape)
    out.sum().backward()
    assert layer.weight.grad is not None and (x.grad is not None) == x_needs_grad


def input_gradient(module, x):
    x = x.detach().requires_grad_()
    out = module(x)
    return torch.autograd.grad(out, x, torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))[0]


def test_a_frozen_weight_keeps_only_the_weight_and_gives_the_exact_input_gradient():
    conv, layer = make_pair(CASES['3x3'][0], 2, dtype=torch.float32)
    conv.requires_grad_(False)
    x = torch.randn(2, 4, 7, 9)
    grad_x, saved = saved_tensors(lambda: input_gradient(layer, x))
    assert saved and non_parameter(saved, layer) == [] and layer.last_kept_bytes is None
    torch.testing.assert_close(grad_x, input_gradient(conv, x))


@pytest.mark.parametrize('situation', ['eval', 'no_grad'])
def test_outside_training_it_is_the_stock_convolution(situation):
    conv, layer = make_pair(CASES['3x3-stride2'][0], 2, dtype=torch.float32)
    x = torch.randn(2, 4, 13, 11)
    if situation == 'eval':
        layer.eval()
        _, _, ours = layer_gradients(layer, x)
        _, _, exact = layer_gradients(conv, x)
        for mine, theirs in zip(ours, exact):
            assert torch.equal(mine, theirs)
    else:
        with torch.no_grad():
            assert torch.equal(layer(x), conv(x))
    assert layer.last_kept_bytes is None


def test_padding_modes_and_string_padding_pad_explicitly_first():
    """Reflect padding and asymmetric 'same' (even kernel): the grid is laid over the padded input, and
    the input gradient goes back through F.pad."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    for kwargs in (dict(kernel_size=3, padding=1, padding_mode='reflect'), dict(kernel_size=(2, 4), padding='same')):
        conv = nn.Conv2d(4, 6, dtype=torch.float64, **kwargs)
        layer = GradFilterConv2d.from_conv(conv, 2)
        out, grad_output, (grad_x, grad_w, _) = layer_gradients(layer, x)
        assert torch.equal(out, conv(x))
        padded = nn.functional.pad(x, conv._reversed_padding_repeated_twice,
                                   mode='constant' if conv.padding_mode == 'zeros' else conv.padding_mode)
        assert layer.last_input_shape == tuple(padded.shape)
        expected = reference_gradients(padded, conv.weight.detach(), grad_output, layer.stride, layer.dilation,
                                       layer.groups, 2)
        torch.testing.assert_close(grad_w, expected[1])
        x_ref = x.clone().requires_grad_()
        pad = nn.functional.pad(x_ref, conv._reversed_padding_repeated_twice,
                                mode='constant' if conv.padding_mode == 'zeros' else conv.padding_mode)
        torch.testing.assert_close(grad_x, torch.autograd.grad(pad, x_ref, expected[0])[0])


def test_unbatched_input_and_autocast():
    conv, layer = make_pair(CASES['3x3'][0], 2, dtype=torch.float32)
    x = torch.randn(4, 7, 9)
    out, _, (grad_x, grad_w, _) = layer_gradients(layer, x)
    assert out.shape == (6, 7, 9) and grad_x.shape == x.shape
    _, _, batched = layer_gradients(layer, x[None])
    torch.testing.assert_close(grad_w, batched[1])
    x = torch.randn(2, 4, 7, 9)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        (out, grad_output, grads), saved = saved_tensors(lambda: layer_gradients(layer, x))
    # the weight autocast cast for the convolution (as any autocast conv keeps it), and x_sum in bfloat16
    kept = non_parameter(saved, layer)
    assert out.dtype == torch.bfloat16 and {t.dtype for t in kept} == {torch.bfloat16}
    assert sorted(tuple(t.shape) for t in kept) == [(2, 4, 4, 5), (6, 4, 3, 3)]
    assert layer.last_kept_bytes == 2 * 4 * 4 * 5 * 2  # bfloat16: 2 bytes an element
    assert [g.dtype for g in grads] == [torch.float32] * 3  # cast back to the leaves' dtypes
    _, _, full = layer_gradients(layer, x)
    for mine, theirs in zip(grads, full):
        assert_close_in_norm(mine, theirs, rtol=2e-2)


# --- layer API ------------------------------------------------------------------------------------------


def test_from_conv_shares_parameters_and_state_dict_keys():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).train(False)
    layer = GradFilterConv2d.from_conv(conv, 4)
    assert layer.weight is conv.weight and layer.bias is conv.bias
    assert list(layer.state_dict()) == list(conv.state_dict()) == ['weight', 'bias']
    assert not layer.training and layer.patch_size == 4
    assert (layer.stride, layer.padding, layer.groups) == ((2, 2), (1, 1), 2)
    assert 'patch_size=4' in repr(layer)
    copied = copy.deepcopy(layer)
    assert copied.patch_size == 4 and torch.equal(copied.weight, conv.weight)
    stock = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    stock.load_state_dict(layer.state_dict())


@pytest.mark.parametrize('bad', [0, -2, 2.5, True, '2', None])
def test_bad_patch_size_is_named(bad):
    with pytest.raises(ValueError, match=re.escape(f'patch_size={bad!r} must be an integer >= 1')):
        GradFilterConv2d(4, 6, 3, patch_size=bad)
    layer = GradFilterConv2d(4, 6, 3)
    with pytest.raises(ValueError, match='patch_size='):
        layer.patch_size = bad
    assert layer.patch_size == 2


def test_build_conv_layer_finds_it_from_any_scope():
    from mmcv.cnn import build_conv_layer
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope('mmseg'):
        layer = build_conv_layer(dict(type='GradFilterConv2d', patch_size=4), 4, 6, 3, padding=1)
    assert type(layer) is GradFilterConv2d and layer.patch_size == 4 and layer.padding == (1, 1)
    assert type(build_conv_layer(dict(type='GradFilterConv2d'), 4, 6, 1)) is GradFilterConv2d


# --- in a fine-tuned region ------------------------------------------------------------------------------


def convmodule_stack():
    """Two mmcv ConvModules (conv, BN with non-trivial running statistics, ReLU) and a 1x1 classifier."""
    from mmcv.cnn import ConvModule
    torch.manual_seed(0)
    model = nn.Sequential(ConvModule(4, 8, 3, padding=1, norm_cfg=dict(type='BN')),
                          ConvModule(8, 8, 3, stride=2, padding=2, dilation=2, norm_cfg=dict(type='BN')),
                          nn.Conv2d(8, 3, 1))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in (model[0].bn, model[1].bn):
            bn.running_mean.copy_(torch.randn(8, generator=g) * 0.3)
            bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
            bn.weight.copy_(torch.rand(8, generator=g) + 0.5)
    return model


def test_a_region_of_gradient_filters_keeps_patch_sums_whole_x_hat_and_masks():
    """FineTuneRegion(method='gradfilt') swaps the convs and makes their ConvModules lean: the forward is
    the stock model's, the region keeps exactly the patch sums, each trainable-gamma BN's x_hat whole
    and one packed mask per ReLU; gradients after the last filter are exact."""
    from mmseg_actcomp.memory import measure_step
    from mmseg_actcomp.ops import LeanBatchNorm2d, PackedMaskReLU
    from mmseg_actcomp.ops.region import FineTuneRegion

    stock = convmodule_stack()
    model = copy.deepcopy(stock)
    region = FineTuneRegion(method='gradfilt', patch_size=2, layers=['0.conv', '1.conv'],
                            freeze_region_norm_stats=True)
    paths = region.apply(model)
    assert [type(model.get_submodule(p)) for p in paths] == [GradFilterConv2d] * 2
    assert [type(m.bn) for m in model[:2]] == [LeanBatchNorm2d] * 2 and model[1].bn.method == 'none'
    assert [type(m.activate) for m in model[:2]] == [PackedMaskReLU] * 2
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        '0.conv.weight', '0.bn.weight', '0.bn.bias', '1.conv.weight', '1.bn.weight', '1.bn.bias'}
    model.train()
    region.set_norms_eval()
    stock.train()
    for bn in (stock[0].bn, stock[1].bn):
        bn.eval()
    stock[2].requires_grad_(False)
    x = torch.randn(2, 4, 13, 11)
    assert torch.equal(model(x), stock(x))

    step = measure_step(model, lambda: model(x).sum(), paths)
    convs, norms = [model[0].conv, model[1].conv], [model[0].bn, model[1].bn]
    masks = sum(math.ceil(2 * 8 * h * w / 8) for h, w in ((13, 11), (7, 6)))
    assert [c.last_kept_bytes for c in convs] == [2 * 4 * 7 * 6 * 4, 2 * 8 * 4 * 3 * 4]
    assert [n.last_kept_bytes for n in norms] == [n.last_vanilla_bytes for n in norms]  # x_hat whole
    assert step.saved['region'] == sum(c.last_kept_bytes for c in convs) + sum(
        n.last_kept_bytes for n in norms) + masks
    assert set(step.saved['per_op']['region']) == {
        'GradFilterConv2dFunctionBackward', 'RunningStatsBatchNormFunctionBackward',
        'PackedMaskReLUFunctionBackward'}
    assert step.layers['1.conv'].kept_bytes == convs[1].last_kept_bytes and step.layers['1.conv'].ranks is None
    assert set(region.stats()) == {'kept_MiB', 'vanilla_MiB', 'kept_ratio'}

    def trainable_grads(module):
        module.zero_grad(set_to_none=True)
        module(x).square().sum().backward()
        return {n: p.grad for n, p in module.named_parameters() if p.requires_grad}

    ours, exact = trainable_grads(model), trainable_grads(stock)
    for name in ('1.bn.weight', '1.bn.bias'):  # after the last filter: exact
        torch.testing.assert_close(ours[name], exact[name])
    for name in ('0.conv.weight', '1.conv.weight', '0.bn.weight'):
        assert torch.isfinite(ours[name]).all() and not torch.allclose(ours[name], exact[name])
