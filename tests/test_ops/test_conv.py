"""Tests of mmseg_actcomp.ops: the compressed convolution's gradients, records, layer API and registry."""
import copy
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.grad import conv2d_weight

from mmseg_actcomp.compression import (METHODS, NonFiniteActivationError, compress, reconstruct,
                                       storage_bytes)
from mmseg_actcomp.ops import (CompressedConv2d, HOSVDConv2d, SVDConv2d, compressed_conv2d)
from conftest import (assert_close_in_norm, assert_rank_meets_threshold, explained_variance_curve,
                      low_rank_activation, non_parameter, saved_tensors)

pytestmark = pytest.mark.usefixtures('single_thread')

LAYERS = [SVDConv2d, HOSVDConv2d]

# Every kind of convolution mmseg's DeepLabV3 / PSPNet / FCN / UPerNet use with ResNet or MobileNetV2
# backbones, at toy sizes.
CONV_CASES = {
    '3x3': dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    'stride2-nobias': dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, bias=False),
    'dilated': dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2),
    'depthwise': dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4),
    'depthwise-dilated-strided': dict(in_channels=4, out_channels=8, kernel_size=3, stride=2, padding=3,
                                      dilation=3, groups=4, bias=False),
    'groups2': dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2),
    'nonsquare-asym-padding': dict(in_channels=4, out_channels=6, kernel_size=(1, 3), padding=(0, 1)),
    'nonsquare-mixed': dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1),
                            padding=(1, 0), dilation=(1, 2)),
    '1x1': dict(in_channels=4, out_channels=8, kernel_size=1),
    '7x7-stem': dict(in_channels=3, out_channels=4, kernel_size=7, stride=2, padding=3, bias=False),
}
X_SHAPE = (3, 9, 8)  # (B, H, W); C comes from the case


def make_pair(layer_cls, case, eps, dtype=torch.float32, seed=0, center=False):
    """A vanilla ``nn.Conv2d`` and a compressed layer sharing its parameters; uncentred (the paper's
    decomposition, whose ranks these tests check against an SVD of the raw input) unless ``center``."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(**case, dtype=dtype)
    return conv, layer_cls.from_conv(conv, eps, center=center)


def grads(module, x, grad_output=None):
    """Output and the gradients of (x, weight, bias) for ``module(x)`` against ``grad_output``."""
    x = x.detach().requires_grad_()
    out = module(x)
    grad_output = torch.randn_like(out, generator=torch.Generator().manual_seed(1)) \
        if grad_output is None else grad_output
    params = [module.weight] + ([module.bias] if module.bias is not None else [])
    return (out,) + torch.autograd.grad(out, [x] + params, grad_output)


# --- exactness at eps = 1 -----------------------------------------------------------------------------


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('case', CONV_CASES.values(), ids=CONV_CASES.keys())
def test_full_threshold_gradients_equal_conv2d(layer_cls, case):
    conv, layer = make_pair(layer_cls, case, 1.0)
    x = torch.randn(X_SHAPE[0], case['in_channels'], *X_SHAPE[1:])
    for ours, theirs in zip(grads(layer, x), grads(conv, x)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert layer.last_ranks is not None


@pytest.mark.slow
@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('case', CONV_CASES.values(), ids=CONV_CASES.keys())
def test_full_threshold_gradcheck_float64(layer_cls, case):
    _, layer = make_pair(layer_cls, case, 1.0, dtype=torch.float64)
    x = torch.randn(2, case['in_channels'], 6, 5, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def fn(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), fast_mode=False)


# --- eps < 1 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('case', [CONV_CASES['3x3'], CONV_CASES['groups2'], CONV_CASES['depthwise'],
                                  CONV_CASES['nonsquare-mixed']], ids=['3x3', 'groups2', 'depthwise',
                                                                       'nonsquare-mixed'])
@pytest.mark.parametrize('eps', [0.7, 0.9])
@pytest.mark.parametrize('center', [False, True], ids=['raw', 'centred'])
def test_truncated_gradients_ranks_and_storage(layer_cls, case, eps, center):
    case = dict(case, in_channels=8, out_channels=8 if case.get('groups') == 4 else 6)
    conv, layer = make_pair(layer_cls, case, eps, center=center)
    x = low_rank_activation((6, 8, 12, 10), seed=3)
    (out, gx, gw, *gb), saved = saved_tensors(lambda: grads(layer, x))
    ref_out, ref_gx, ref_gw, *ref_gb = grads(conv, x)
    # Forward and input gradient are the exact convolution's; the bias gradient too, up to summation
    # order.
    assert torch.equal(out, ref_out) and torch.equal(gx, ref_gx)
    for ours, theirs in zip(gb, ref_gb):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    # The weight gradient is the exact one of the reconstruction.
    modes = METHODS[layer_cls.method]
    tucker = compress(x, eps, modes, center=center)
    # a decomposition no smaller than the input is not kept: the input is, and the gradient is exact
    kept_input = tucker.nbytes >= x.numel() * x.element_size()
    recon = x if kept_input else reconstruct(tucker)
    expected = conv2d_weight(recon, conv.weight.shape, torch.randn_like(out, generator=torch.Generator()
                                                                         .manual_seed(1)),
                             conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(gw, expected, rtol=1e-4, atol=1e-5)
    # Ranks meet the explained-variance definition on an exact float64 SVD of each unfolding (of the
    # centred input, plus the mean's one component, when centred).
    assert len(layer.last_ranks) == len(modes)
    rest = x - x.mean(dim=(0, 2, 3), keepdim=True) if center else x
    for mode, rank in zip(modes, layer.last_ranks):
        assert_rank_meets_threshold(rank - int(center), explained_variance_curve(rest, mode), eps)
    # Records, and what autograd really keeps, equal the storage formula.
    formula = storage_bytes(x.shape, layer.last_ranks, modes, x.dtype)
    assert layer.last_input_shape == tuple(x.shape)
    assert layer.last_vanilla_bytes == x.numel() * 4
    assert kept_input == (formula >= layer.last_vanilla_bytes)
    # (it happens here only centred at eps 0.9: the SVD's rank reaches the batch size, mean included)
    assert not kept_input or (center and eps == 0.9 and layer.last_ranks == (x.shape[0],))
    assert layer.last_kept_bytes == min(formula, layer.last_vanilla_bytes)
    kept = non_parameter(saved, layer)
    assert sum(t.numel() * t.element_size() for t in kept) == layer.last_kept_bytes
    assert all(t.data_ptr() != x.data_ptr() for t in kept) != kept_input


def test_truncation_actually_changes_the_weight_gradient():
    """Guards against a layer that silently keeps the input."""
    conv, layer = make_pair(HOSVDConv2d, CONV_CASES['3x3'], 0.5)
    x = low_rank_activation((6, 4, 12, 10), seed=3)
    assert not torch.allclose(grads(layer, x)[2], grads(conv, x)[2], rtol=1e-3)


@pytest.mark.parametrize('case', [CONV_CASES['3x3'], CONV_CASES['depthwise'], CONV_CASES['stride2-nobias']],
                         ids=['3x3', 'depthwise', 'stride2'])
@pytest.mark.parametrize('center', [False, True], ids=['raw', 'centred'])
def test_whole_batch_mode_truncates_channel_and_spatial_only(case, center):
    """truncate_batch=False: no batch factor, the core keeps every sample, the weight gradient is the exact
    one of that decomposition's reconstruction, which is no further from the input than the paper's."""
    case = dict(case, in_channels=8, out_channels=8 if case.get('groups') == 4 else 6)
    torch.manual_seed(0)
    conv = nn.Conv2d(**case)
    layer = HOSVDConv2d.from_conv(conv, 0.7, center=center, truncate_batch=False)
    paper = HOSVDConv2d(8, 6, 1)
    assert layer.modes == (1, 2, 3) and paper.modes == (0, 1, 2, 3) and 'truncate_batch=False' in repr(layer)
    x = low_rank_activation((6, 8, 12, 10), seed=3)
    (out, gx, gw, *_), saved = saved_tensors(lambda: grads(layer, x))
    ref_gx = grads(conv, x)[1]
    assert torch.equal(gx, ref_gx)
    tucker = compress(x, 0.7, (1, 2, 3), center=center)
    assert tucker.factors[0] is None
    expected = conv2d_weight(reconstruct(tucker), conv.weight.shape,
                             torch.randn_like(out, generator=torch.Generator().manual_seed(1)),
                             conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(gw, expected, rtol=1e-4, atol=1e-5)
    assert layer.last_ranks[0] == x.shape[0] and layer.last_ranks[1:] == tucker.ranks
    assert layer.last_kept_bytes == tucker.nbytes == sum(
        t.numel() * t.element_size() for t in non_parameter(saved, layer))
    # the same channel and spatial projections, without the batch one: no larger an error than the paper's
    paper_error = (reconstruct(compress(x, 0.7, paper.modes, center=center)) - x).norm()
    assert (reconstruct(tucker) - x).norm() <= paper_error and paper_error > 0


def test_svd_cannot_leave_its_only_mode_whole():
    from mmseg_actcomp.compression import truncated_modes
    assert truncated_modes('hosvd', False) == (1, 2, 3) and truncated_modes('svd') == (0,)
    with pytest.raises(ValueError, match="truncates only the batch mode: truncate_batch=False leaves it nothing"):
        SVDConv2d(4, 4, 1, truncate_batch=False)
    with pytest.raises(ValueError, match="method='tucker' is not one of"):
        truncated_modes('tucker')
    with pytest.raises(ValueError, match="truncate_batch='no' must be True or False"):
        HOSVDConv2d(4, 4, 1, truncate_batch='no')


# --- robustness ---------------------------------------------------------------------------------------


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_all_zero_input_gives_zero_weight_gradient(layer_cls):
    conv, layer = make_pair(layer_cls, CONV_CASES['3x3'], 0.8)
    x = torch.zeros(3, 4, 6, 5)
    (_, gx, gw, gb), saved = saved_tensors(lambda: grads(layer, x))
    _, ref_gx, _, ref_gb = grads(conv, x)
    assert gw is not None and not gw.any() and torch.isfinite(gw).all()
    assert torch.equal(gx, ref_gx)
    torch.testing.assert_close(gb, ref_gb, rtol=1e-6, atol=1e-6)
    assert layer.last_ranks == (0,) * len(METHODS[layer_cls.method])
    assert layer.last_kept_bytes == 0
    assert sum(t.numel() for t in non_parameter(saved, layer)) == 0


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_input_raises_naming_the_layer(layer_cls, bad):
    _, layer = make_pair(layer_cls, CONV_CASES['3x3'], 0.8)
    x = torch.randn(2, 4, 5, 5)
    x[0, 1, 2, 3] = bad
    with pytest.raises(NonFiniteActivationError, match=layer_cls.__name__):
        layer(x)
    layer.layer_name = 'decode_head.bottleneck.conv'
    with pytest.raises(NonFiniteActivationError, match=r'decode_head\.bottleneck\.conv'):
        layer(x)


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('shape', [(1, 4, 6, 5), (2, 1, 6, 5), (2, 4, 1, 5), (2, 4, 6, 1)])
def test_batch_one_and_size_one_modes(layer_cls, shape):
    case = dict(in_channels=shape[1], out_channels=3, kernel_size=(1, 3), padding=(0, 1))
    conv, layer = make_pair(layer_cls, case, 1.0)
    x = torch.randn(shape)
    for ours, theirs in zip(grads(layer, x), grads(conv, x)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    layer.explained_variance = 0.6
    assert all(torch.isfinite(g).all() for g in grads(layer, x))


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_input(layer_cls, dtype):
    conv, layer = make_pair(layer_cls, CONV_CASES['3x3'], 1.0, dtype=dtype)
    x = low_rank_activation((4, 4, 8, 7), dtype=dtype)
    ours, saved = saved_tensors(lambda: grads(layer, x))
    # at eps 1 no decomposition is smaller than this input: it is kept itself
    assert layer.last_kept_whole and [t.dtype for t in non_parameter(saved, layer)] == [dtype]
    for mine, theirs in zip(ours, grads(conv, x)):
        assert mine.dtype == dtype
        assert_close_in_norm(mine, theirs, rtol=2e-2)
    layer.explained_variance = 0.8
    assert all(torch.isfinite(g).all() for g in grads(layer, x))
    # float16 keeps the core (which holds the input's norm) in float32, against overflow
    _, saved = saved_tensors(lambda: grads(layer, x))
    kept = non_parameter(saved, layer)
    if layer_cls is SVDConv2d and layer.last_kept_whole:  # 4 samples: a rank-4 SVD is no smaller
        assert [t.dtype for t in kept] == [dtype]
        return
    assert not layer.last_kept_whole and len(kept) == 1 + len(METHODS[layer_cls.method])
    assert kept[0].dtype == (torch.float32 if dtype == torch.float16 else dtype)
    assert all(t.dtype == dtype for t in kept[1:])


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_autocast_stores_factors_in_autocast_dtype(layer_cls):
    conv, layer = make_pair(layer_cls, CONV_CASES['3x3'], 1.0)
    x = torch.randn(3, 4, 8, 7)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ours, saved = saved_tensors(lambda: grads(layer, x))
        theirs = grads(conv, x)
    assert all(t.dtype == torch.bfloat16 for t in non_parameter(saved, layer))
    assert ours[0].dtype == theirs[0].dtype == torch.bfloat16
    assert ours[2].dtype == torch.float32  # the master weight's gradient
    for mine, ref in zip(ours, theirs):
        assert_close_in_norm(mine, ref, rtol=2e-2)


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_autocast_does_not_lower_the_decomposition_precision(layer_cls):
    _, layer = make_pair(layer_cls, CONV_CASES['3x3'], 0.8)
    x = low_rank_activation((6, 4, 12, 10), seed=3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, saved = saved_tensors(lambda: layer(x))
        out.float().sum().backward()
    # Exactly what the same bf16 input gives outside autocast, decomposed in float32.
    expected = compress(x.bfloat16(), 0.8, METHODS[layer_cls.method]).tensors
    kept = non_parameter(saved, layer)[-len(expected):]
    assert all(torch.equal(a, b) for a, b in zip(kept, expected))
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_channels_last_input(layer_cls):
    conv, layer = make_pair(layer_cls, CONV_CASES['groups2'], 1.0)
    x = torch.randn(3, 4, 9, 8).to(memory_format=torch.channels_last)
    for ours, theirs in zip(grads(layer, x), grads(conv, x)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_full_threshold_keeps_full_ranks(layer_cls):
    _, layer = make_pair(layer_cls, CONV_CASES['3x3'], 1.0)
    grads(layer, torch.randn(3, 4, 6, 5))
    assert layer.last_ranks == {'svd': (3,), 'hosvd': (3, 4, 6, 5)}[layer_cls.method]


@pytest.mark.filterwarnings('ignore:Using padding=.same. with even kernel')
@pytest.mark.parametrize('padding, padding_mode, kernel_size',
                         [(1, 'reflect', 3), (1, 'replicate', 3), ((2, 1), 'circular', 3),
                          ('same', 'zeros', 3), ('same', 'zeros', 4), ('same', 'reflect', (2, 3)),
                          ('valid', 'zeros', 3)])
@pytest.mark.parametrize('layer_cls', LAYERS)
def test_padding_modes_and_string_padding(layer_cls, padding, padding_mode, kernel_size):
    case = dict(in_channels=4, out_channels=6, kernel_size=kernel_size, padding=padding,
                padding_mode=padding_mode)
    conv, layer = make_pair(layer_cls, case, 1.0)
    x = torch.randn(2, 4, 7, 6)
    for ours, theirs in zip(grads(layer, x), grads(conv, x)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


# --- when not to compress, and which gradients ---------------------------------------------------------


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('situation', ['eval', 'no_grad', 'inference_mode', 'frozen_weight'])
def test_plain_convolution_when_no_weight_gradient_is_needed(layer_cls, situation):
    conv, layer = make_pair(layer_cls, CONV_CASES['3x3'], 0.5)
    x = torch.randn(2, 4, 6, 5, requires_grad=True)
    if situation == 'eval':
        layer.eval()
    if situation == 'frozen_weight':
        conv.weight.requires_grad_(False)
    context = {'no_grad': torch.no_grad, 'inference_mode': torch.inference_mode}.get(
        situation, torch.enable_grad)
    with context():
        out = layer(x)
        ref = conv(x)
    assert torch.equal(out, ref)
    assert layer.last_ranks is None
    if situation == 'frozen_weight':
        assert torch.equal(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0])


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_frozen_weight_keeps_nothing_of_the_input(layer_cls):
    """Its input still needs a gradient (exact, from the weight alone), so a plain conv would keep the
    input; the compressed layer keeps only its weight."""
    conv, layer = make_pair(layer_cls, CONV_CASES['3x3'], 0.8)
    conv.weight.requires_grad_(False)
    x = low_rank_activation((3, 4, 6, 5)).requires_grad_()

    def input_and_bias_grads(module):
        out = module(x)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        return torch.autograd.grad(out, [x, module.bias], g)
    (ours, saved), theirs = saved_tensors(lambda: input_and_bias_grads(layer)), input_and_bias_grads(conv)
    assert non_parameter(saved, layer) == [] and saved  # the weight alone
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours[1], theirs[1])


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_a_solver_failure_keeps_the_input_for_the_step_and_warns_once(layer_cls, monkeypatch):
    from mmseg_actcomp.ops.convert import compression_stats

    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError('linalg.eigh: The algorithm failed to converge (test)')
    monkeypatch.setattr(torch.linalg, 'eigh', fail)
    monkeypatch.setattr(torch.linalg, 'svd', fail)
    conv, layer = make_pair(layer_cls, CONV_CASES['3x3'], 0.8)
    layer.layer_name = 'decode_head.bottleneck.conv'
    x = low_rank_activation((3, 4, 6, 5))
    with pytest.warns(RuntimeWarning, match=r'decode_head.bottleneck.conv: no eigen-solver converged .*'
                                            r'keeping its input uncompressed'):
        ours, saved = saved_tensors(lambda: grads(layer, x))
    assert layer.last_kept_whole and layer.last_kept_bytes == layer.last_vanilla_bytes == x.numel() * 4
    assert sum(t.numel() * t.element_size() for t in non_parameter(saved, layer)) == x.numel() * 4
    for mine, theirs in zip(ours, grads(conv, x)):  # the input itself: the exact gradients
        torch.testing.assert_close(mine, theirs)
    assert compression_stats({'conv': layer})['kept_whole'] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # once: no second warning
        grads(layer, x)


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_float16_autocast_with_an_input_norm_above_float16s_range(layer_cls):
    """Every element fits in float16 but ||x||_F > 65504: the core would overflow in float16 (it holds the
    norm); kept in float32, the weight gradient is finite and vanilla float16's."""
    conv, layer = make_pair(layer_cls, CONV_CASES['3x3'], 1.0)
    x = torch.rand(4, 4, 32, 32, generator=torch.Generator().manual_seed(0)) * 1000
    assert x.norm() > 65504 and x.abs().max() <= 1000
    results = []
    for module in (conv, layer):
        module.zero_grad()
        with torch.autocast('cpu', dtype=torch.float16):
            out = module(x)
        (out.float() * 1e-3).sum().backward()
        results.append(module.weight.grad)
    assert torch.isfinite(results[1]).all()
    assert_close_in_norm(results[1], results[0], rtol=2e-2)
    layer.explained_variance = 0.8
    layer.zero_grad()
    with torch.autocast('cpu', dtype=torch.float16):
        (layer(x).float() * 1e-3).sum().backward()
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_input_without_grad_keeps_only_the_factors(layer_cls):
    conv, layer = make_pair(layer_cls, CONV_CASES['3x3'], 0.8)
    x = low_rank_activation((3, 4, 6, 5))
    out, saved = saved_tensors(lambda: layer(x))
    # The weight is only needed for an input gradient.
    assert not any(t.data_ptr() == layer.weight.data_ptr() for t in saved)
    assert sum(t.numel() * t.element_size() for t in saved) == layer.last_kept_bytes
    gw, gb = torch.autograd.grad(out.sum(), [layer.weight, layer.bias])
    assert gw.shape == layer.weight.shape
    torch.testing.assert_close(gb, grads(conv, x, torch.ones_like(out))[3])


def test_function_without_weight_gradient_keeps_no_factors():
    x = torch.randn(2, 4, 6, 5, requires_grad=True)
    weight, bias = torch.randn(6, 4, 3, 3), torch.randn(6, requires_grad=True)
    tucker = compress(x, 0.8, METHODS['hosvd'])
    out, saved = saved_tensors(lambda: compressed_conv2d(x, weight, bias, tucker, padding=1))
    assert len(saved) == 1 and saved[0].data_ptr() == weight.data_ptr()
    gx, gb = torch.autograd.grad(out.sum(), [x, bias])
    ref = nn.functional.conv2d(x, weight, bias, padding=1)
    ref_gx, ref_gb = torch.autograd.grad(ref.sum(), [x, bias])
    assert torch.equal(gx, ref_gx)
    torch.testing.assert_close(gb, ref_gb, rtol=1e-6, atol=1e-6)


def test_unbatched_input():
    conv, layer = make_pair(HOSVDConv2d, CONV_CASES['3x3'], 1.0)
    x = torch.randn(4, 6, 5)
    for ours, theirs in zip(grads(layer, x), grads(conv, x)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert layer.last_input_shape == (1, 4, 6, 5)


# --- layer API ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('value', [0, -0.5, 1.01, float('nan'), True, '0.8', None])
def test_explained_variance_is_validated(layer_cls, value):
    with pytest.raises(ValueError, match=r'explained_variance.*\(0, 1\].*' + repr(value)[:3]):
        layer_cls(4, 6, 3, explained_variance=value)
    layer = layer_cls(4, 6, 3)
    with pytest.raises(ValueError, match=r'\(0, 1\]'):
        layer.explained_variance = value
    assert layer.explained_variance == 0.8


def test_base_class_needs_a_method():
    with pytest.raises(TypeError, match='SVDConv2d or HOSVDConv2d'):
        CompressedConv2d(4, 6, 3)


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_constructor_matches_conv2d_signature_and_state_dict(layer_cls):
    args = (4, 6, (3, 2), 2, (1, 0), 1, 2, False, 'reflect', None, torch.float64)
    layer, conv = layer_cls(*args, explained_variance=0.7), nn.Conv2d(*args)
    assert list(layer.state_dict()) == list(conv.state_dict()) == ['weight']
    assert list(layer_cls(4, 6, 3).state_dict()) == list(nn.Conv2d(4, 6, 3).state_dict())
    layer.load_state_dict(conv.state_dict(), strict=True)
    assert torch.equal(layer.weight, conv.weight) and layer.weight.dtype == torch.float64
    for attr in ('kernel_size', 'stride', 'padding', 'dilation', 'groups', 'padding_mode'):
        assert getattr(layer, attr) == getattr(conv, attr)
    assert 'explained_variance=0.7' in repr(layer)
    assert layer.layer_name == layer_cls.__name__
    assert (layer.last_ranks, layer.last_input_shape, layer.last_kept_bytes,
            layer.last_vanilla_bytes) == (None,) * 4


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('bias', [True, False])
def test_from_conv_shares_parameters(layer_cls, bias):
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=(1, 2), dilation=2, groups=2, bias=bias,
                     padding_mode='replicate').eval()
    layer = layer_cls.from_conv(conv, 0.9)
    assert layer.weight is conv.weight and layer.bias is conv.bias
    assert (layer.bias is None) == (not bias)
    assert not layer.training and layer.explained_variance == 0.9
    for attr in ('in_channels', 'out_channels', 'kernel_size', 'stride', 'padding', 'dilation',
                 'groups', 'padding_mode', '_reversed_padding_repeated_twice'):
        assert getattr(layer, attr) == getattr(conv, attr)
    optimizer = torch.optim.SGD(conv.parameters(), lr=1.0)
    layer.train()
    layer(torch.randn(2, 4, 7, 7)).sum().backward()
    before = conv.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, conv.weight)
    assert layer.state_dict().keys() == conv.state_dict().keys()
    copied = copy.deepcopy(layer)
    assert copied.explained_variance == 0.9 and copied.weight is not conv.weight
    with pytest.raises(TypeError):
        layer_cls.from_conv(nn.Linear(3, 3), 0.8)


def test_registered_for_build_conv_layer_in_any_scope():
    from mmcv.cnn import ConvModule, build_conv_layer
    from mmengine.registry import DefaultScope

    layer = build_conv_layer(dict(type='HOSVDConv2d', explained_variance=0.8), 4, 8, 3, padding=1)
    assert type(layer) is HOSVDConv2d and layer.explained_variance == 0.8 and layer.padding == (1, 1)
    import mmseg.models  # noqa: F401  (registers mmseg's modules, as a config's default_scope does)
    from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        assert DefaultScope.get_current_instance().scope_name == 'mmseg'
        layer = build_conv_layer(dict(type='SVDConv2d', explained_variance=0.7), 4, 8, 3)
        assert type(layer) is SVDConv2d and layer.explained_variance == 0.7
        module = ConvModule(4, 8, 3, padding=1, conv_cfg=dict(type='HOSVDConv2d', explained_variance=0.9))
        assert type(module.conv) is HOSVDConv2d
        backbone = MODELS.build(dict(type='ResNetV1c', depth=18, conv_cfg=dict(
            type='HOSVDConv2d', explained_variance=0.8)))
        assert sum(type(m) is HOSVDConv2d for m in backbone.modules()) > 10


def test_compression_stats_report_the_kept_energy():
    """kept_energy is ||x_hat||^2 / ||x||^2 of the decomposition the weight gradient uses: 1 at eps = 1,
    below 1 (and at least eps for SVD's single mode) when truncated."""
    from mmseg_actcomp.compression import reconstruct, svd
    from mmseg_actcomp.ops.convert import compression_stats
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 5)
    for eps in (1.0, 0.6):
        conv = SVDConv2d(4, 3, 3, padding=1, explained_variance=eps, center=False)
        conv(x.clone().requires_grad_())
        expected = reconstruct(svd(x, eps)).square().sum() / x.square().sum()
        stats = compression_stats({'conv': conv})
        assert stats['kept_energy'] == pytest.approx(float(expected), rel=1e-5)
        assert (stats['kept_energy'] == pytest.approx(1.0, rel=1e-5)) == (eps == 1.0)
        assert stats['kept_energy'] >= eps - 1e-6


@pytest.mark.parametrize('layer_type', [SVDConv2d, HOSVDConv2d])
def test_centred_conv_exact_at_eps_one_and_reports_its_kept_energy(layer_type):
    from mmseg_actcomp.compression import METHODS, compress
    from mmseg_actcomp.ops.convert import compression_stats
    torch.manual_seed(1)
    x = torch.randn(5, 4, 6, 6, dtype=torch.float64).relu() + 0.3
    reference = nn.Conv2d(4, 3, 3, padding=1).double()
    conv = layer_type.from_conv(copy.deepcopy(reference), explained_variance=1.0, center=True)
    assert 'center=True' in repr(conv)
    for layer in (reference, conv):
        layer(x.clone().requires_grad_()).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, reference.weight.grad)
    conv.explained_variance = 0.6
    conv(x.clone().requires_grad_())
    x_hat = reconstruct(compress(x, 0.6, METHODS[conv.method], center=True))
    expected = float(x_hat.square().sum() / x.square().sum())
    assert compression_stats({'conv': conv})['kept_energy'] == pytest.approx(expected, rel=1e-6)


def test_frozen_subspace_estimates_then_projects():
    """subspace='frozen': exact for the first M compressing steps while the Grams add up, then the
    channel and spatial factors are the frozen bases (the batch mode still decomposed), and the weight
    gradient is that of the projection onto them."""
    conv, layer = make_pair(HOSVDConv2d, CONV_CASES['3x3'], 0.8)
    layer = HOSVDConv2d.from_conv(conv, 0.8, center=False, subspace='frozen', subspace_batches=2)
    inputs = [low_rank_activation((3, 4, 9, 8), seed=s) for s in range(4)]
    for x in inputs[:2]:
        assert layer.frozen_bases is None
        grads(layer, x)
    bases = layer.frozen_bases
    assert sorted(bases) == [1, 2, 3]
    x = inputs[3]
    _, saved = saved_tensors(lambda: grads(layer, x))
    kept = non_parameter(saved, layer)
    factors = kept[1:]  # core, then U_0 .. U_3
    for n in (1, 2, 3):
        torch.testing.assert_close(factors[n], bases[n])
    assert layer.last_ranks[1:] == tuple(bases[n].shape[1] for n in (1, 2, 3))
    # the weight gradient is that of x projected onto the kept bases
    tucker = compress(x, 0.8, METHODS['hosvd'], fixed=bases)
    expected = conv2d_weight(reconstruct(tucker), layer.weight.shape, torch.ones_like(conv(x)), 1, 1)
    layer.zero_grad()
    layer(x.requires_grad_()).sum().backward()
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-4, atol=1e-5)


def test_frozen_subspace_falls_back_to_exact_for_a_mode_whose_size_changed():
    conv, _ = make_pair(HOSVDConv2d, CONV_CASES['3x3'], 0.8)
    layer = HOSVDConv2d.from_conv(conv, 0.8, center=False, subspace='frozen', subspace_batches=1)
    grads(layer, low_rank_activation((3, 4, 9, 8)))
    spatial = layer.frozen_bases[2].shape[1]
    grads(layer, low_rank_activation((3, 4, 12, 8), seed=1))  # H changed: mode 2 exact, no error
    assert layer.last_input_shape == (3, 4, 12, 8) and layer.frozen_bases[2].shape == (9, spatial)


def test_warm_subspace_starts_each_step_from_the_last_bases_meets_eps_and_refreshes(monkeypatch):
    """subspace='warm': the first step and every M-th decompose the channel and spatial modes exactly,
    the steps between start from the last step's factors; every step's factors capture eps of its input
    in every mode; a changed size is decomposed exactly."""
    from mmseg_actcomp.compression import decompose, unfold
    conv = nn.Conv2d(48, 8, 3, padding=1)
    layer = HOSVDConv2d.from_conv(conv, 0.8, center=False, subspace='warm', subspace_batches=3)
    starts, warm = [], decompose.warm_leading_vectors

    def spy(x, mode, eps, previous, name='activation'):
        starts.append((mode, previous))
        return warm(x, mode, eps, previous, name)
    monkeypatch.setattr(decompose, 'warm_leading_vectors', spy)
    batches = low_rank_activation((20, 48, 36, 36), components=8, seed=7).split(4)
    for step, x in enumerate(batches):
        before = layer.warm_bases
        _, saved = saved_tensors(lambda: grads(layer, x.contiguous()))
        warm_modes = [mode for mode, _ in starts]
        if step % 3 == 0:
            assert warm_modes == [], step  # exact: the first step, and a refresh every 3
        else:
            assert warm_modes == [1, 2, 3], step
            for mode, previous in starts:
                assert previous is before[mode]
        factors = non_parameter(saved, layer)[1:]
        for n in range(4):
            unfolded = unfold(x.double(), n)
            captured = (factors[n].double().mT @ unfolded).square().sum() / unfolded.square().sum()
            assert captured >= 0.8 - 1e-5, (step, n)
        assert layer.warm_steps == step % 3 + 1
        starts.clear()
    grads(layer, low_rank_activation((4, 48, 30, 36), seed=8))  # H changed: mode 2 exact, no error
    assert [mode for mode, _ in starts] == [1, 3] and layer.warm_bases[2].shape[0] == 30


@pytest.mark.parametrize('layer_cls,subspace,batches,message', [
    (SVDConv2d, 'frozen', 8, "subspace='frozen' needs method='hosvd'"),
    (SVDConv2d, 'warm', 8, "subspace='warm' needs method='hosvd'"),
    (HOSVDConv2d, 'cold', 8, r"subspace='cold' is not one of \['exact', 'warm', 'frozen'\]"),
    (HOSVDConv2d, 'frozen', 0, 'subspace_batches=0 must be an integer >= 1'),
])
def test_bad_subspace_arguments_are_named(layer_cls, subspace, batches, message):
    with pytest.raises(ValueError, match=message):
        layer_cls.from_conv(nn.Conv2d(4, 6, 3), 0.8, subspace=subspace, subspace_batches=batches)
