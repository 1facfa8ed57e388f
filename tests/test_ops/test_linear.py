"""Tests of mmseg_actcomp.ops.linear: the compressed linear layers' gradients, records, layer API and registry,
on the layouts nn.Linear meets: (B, C), (B, N, C) tokens and channel-last (B, H, W, C)."""
import copy
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mmseg_actcomp.compression import (NonFiniteActivationError, Tucker, compress, method_modes, reconstruct,
                                       storage_bytes, truncated_modes)
from mmseg_actcomp.ops import (CompressedLinear, HOSVDLinear, SVDLinear, compressed_linear,
                               linear_weight_from_tucker)
from conftest import (assert_close_in_norm, assert_rank_meets_threshold, explained_variance_curve,
                      low_rank_activation, non_parameter, saved_tensors)

pytestmark = pytest.mark.usefixtures('single_thread')

LAYERS = [SVDLinear, HOSVDLinear]
#: the layouts of a linear layer's input, channel last: odd token counts, channel-last maps, plain vectors
SHAPES = {'BC': (12, 16), 'BNC-7': (6, 7, 16), 'BNC-13': (6, 13, 16), 'BHWC': (6, 5, 4, 16)}


def linear_activation(shape, seed=0, dtype=torch.float32):
    """A channel-last activation ``(B, ..., C)`` with decaying spectra in every mode: conftest's
    ``low_rank_activation`` of ``(B, C, *rest)`` with the channel mode moved last (tokens ``N`` as a
    ``(N, 1)`` map)."""
    b, *rest, c = shape
    spatial = rest + [1] * (2 - len(rest))
    x = low_rank_activation((b, c, *spatial), seed=seed, dtype=dtype)
    return x.reshape(b, c, *rest).movedim(1, -1).contiguous()


def make_pair(layer_cls, eps, in_features=16, out_features=6, bias=True, dtype=torch.float32, center=False,
              truncate_batch=True):
    """A vanilla ``nn.Linear`` and a compressed layer sharing its parameters; uncentred (ranks checked
    against an SVD of the raw input) unless ``center``."""
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
    return linear, layer_cls.from_linear(linear, eps, center=center, truncate_batch=truncate_batch)


def grads(module, x, grad_output=None):
    """Output and the gradients of (x, weight[, bias]) for ``module(x)`` against ``grad_output``."""
    x = x.detach().requires_grad_()
    out = module(x)
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype) \
        if grad_output is None else grad_output
    params = [module.weight] + ([module.bias] if module.bias is not None else [])
    return (out,) + torch.autograd.grad(out, [x] + params, grad_output)


# --- the weight gradient from the factors ---------------------------------------------------------------

#: which modes a decomposition truncates, per number of modes: SVD's batch mode, HOSVD's all, HOSVD's with
#: the batch mode whole, the channel mode alone, the leading modes alone
MODE_SETS = {
    'svd': lambda n: (0,), 'hosvd': lambda n: tuple(range(n)), 'hosvd-batch-whole': lambda n: tuple(range(1, n)),
    'channel': lambda n: (n - 1,), 'leading': lambda n: tuple(range(n - 1)),
}


@pytest.mark.parametrize('modes', MODE_SETS.values(), ids=MODE_SETS.keys())
@pytest.mark.parametrize('shape', [(5, 9), (4, 7, 9), (4, 13, 9), (4, 3, 5, 9)], ids=['BC', 'BNC-7', 'BNC-13',
                                                                                       'BHWC'])
@pytest.mark.parametrize('center', [False, True], ids=['raw', 'centred'])
def test_weight_gradient_from_the_factors_is_the_reconstructions(modes, shape, center):
    """linear_weight_from_tucker equals autograd of F.linear(reconstruct(tucker), W) in float64 for every
    layout and truncated mode set; the input and bias gradients of compressed_linear are exact."""
    x = linear_activation(shape, seed=2, dtype=torch.float64)
    tucker = compress(x, 0.7, modes(x.dim()), center=center, channel_mode=-1)
    assert tucker.modes == modes(x.dim())
    g = torch.randn(shape[:-1] + (4,), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    weight = torch.randn(4, shape[-1], dtype=torch.float64, requires_grad=True)
    expected, = torch.autograd.grad(F.linear(reconstruct(tucker), weight), weight, g)
    torch.testing.assert_close(linear_weight_from_tucker(tucker, g), expected)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x = x.requires_grad_()
    ours = torch.autograd.grad(compressed_linear(x, weight, bias, tucker), [x, weight, bias], g)
    theirs = torch.autograd.grad(F.linear(x, weight, bias), [x, weight, bias], g)
    torch.testing.assert_close(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], expected)
    torch.testing.assert_close(ours[2], theirs[2])
    assert not torch.allclose(ours[1], theirs[1])  # truncated: not the input's own gradient


@pytest.mark.parametrize('shape', [(4, 5), (2, 7, 5), (2, 3, 2, 5)], ids=['BC', 'BNC-7', 'BHWC'])
@pytest.mark.parametrize('modes', [MODE_SETS['hosvd'], MODE_SETS['svd']], ids=['hosvd', 'svd'])
def test_gradcheck_with_exact_factors(shape, modes):
    """gradcheck (float64) of compressed_linear with an exact decomposition of x: every factor is applied
    (none is expanded into the input), and the result is the linear map's own gradient."""
    x = linear_activation(shape, seed=4, dtype=torch.float64).requires_grad_()
    tucker = compress(x, 1.0, modes(x.dim()))
    assert all(f is not None for f in (tucker.factors[n] for n in modes(x.dim())))
    weight = torch.randn(3, shape[-1], dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: compressed_linear(*a, tucker), (x, weight, bias), fast_mode=False)


def test_function_keeps_the_weight_only_for_the_input_gradient_and_the_factors_only_for_the_weights():
    x = linear_activation((3, 7, 16))
    weight, bias = torch.randn(4, 16), torch.randn(4, requires_grad=True)
    tucker = compress(x, 0.8, (0, 1, 2))
    out, saved = saved_tensors(lambda: compressed_linear(x.requires_grad_(), weight, bias, tucker))
    assert len(saved) == 1 and saved[0].data_ptr() == weight.data_ptr()  # a frozen weight: no factors
    gx, gb = torch.autograd.grad(out.sum(), [x, bias])
    ref_gx, ref_gb = torch.autograd.grad(F.linear(x, weight, bias).sum(), [x, bias])
    torch.testing.assert_close(gx, ref_gx)
    torch.testing.assert_close(gb, ref_gb)
    weight.requires_grad_()
    out, saved = saved_tensors(lambda: compressed_linear(x.detach(), weight, None, tucker))
    assert [t.data_ptr() for t in saved] == [t.data_ptr() for t in tucker.tensors]  # no input gradient: no weight
    assert torch.autograd.grad(out.sum(), weight)[0].shape == (4, 16)


def test_rank_zero_gives_a_zero_weight_gradient():
    tucker = compress(torch.zeros(3, 7, 5), 0.8, (0, 1, 2))
    assert tucker.ranks == (0, 0, 0)
    grad = linear_weight_from_tucker(tucker, torch.randn(3, 7, 4))
    assert grad.shape == (4, 5) and not grad.any()


# --- the layer at eps = 1 -------------------------------------------------------------------------------


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('shape', SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize('center', [False, True], ids=['raw', 'centred'])
@pytest.mark.parametrize('bias', [True, False], ids=['bias', 'nobias'])
def test_full_threshold_output_and_gradients_equal_linear(layer_cls, shape, center, bias):
    linear, layer = make_pair(layer_cls, 1.0, center=center, bias=bias)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    ours, theirs = grads(layer, x), grads(linear, x)
    assert len(ours) == len(theirs) == 3 + bias
    for mine, ref in zip(ours, theirs):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)
    assert layer.last_input_shape == shape and len(layer.last_ranks) == len(method_modes(layer_cls.method,
                                                                                            len(shape)))


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('shape', [(3, 16), (2, 7, 16), (2, 3, 2, 16)], ids=['BC', 'BNC-7', 'BHWC'])
def test_the_output_can_be_modified_in_place(layer_cls, shape):
    """mmdet's FFN (MaskFormer's decoder) runs ReLU(inplace=True) on a linear layer's output: on a 3-d input
    F.linear's output is a view, which autograd forbids modifying in place as a custom Function's output."""
    linear, layer = make_pair(layer_cls, 1.0)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    results = []
    for module in (layer, linear):
        inputs = [x.detach().requires_grad_(), module.weight, module.bias]
        out = F.relu(module(inputs[0]), inplace=True)
        results.append((out,) + torch.autograd.grad(out.square().sum(), inputs))
    for mine, ref in zip(*results):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('shape', [(3, 4), (2, 7, 4), (2, 3, 2, 4)], ids=['BC', 'BNC-7', 'BHWC'])
def test_full_threshold_gradcheck_float64(layer_cls, shape):
    _, layer = make_pair(layer_cls, 1.0, in_features=4, out_features=3, dtype=torch.float64, center=True)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def fn(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), fast_mode=False)


# --- eps < 1 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('shape', SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize('eps', [0.7, 0.9])
@pytest.mark.parametrize('center', [False, True], ids=['raw', 'centred'])
def test_truncated_gradients_ranks_and_storage(layer_cls, shape, eps, center):
    linear, layer = make_pair(layer_cls, eps, center=center)
    x = linear_activation(shape, seed=3)
    (out, gx, gw, gb), saved = saved_tensors(lambda: grads(layer, x))
    ref_out, ref_gx, _, ref_gb = grads(linear, x)
    # Forward and input gradient are the exact linear map's; the bias gradient too, up to summation order.
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(gx, ref_gx, rtol=0, atol=1e-6)
    torch.testing.assert_close(gb, ref_gb, rtol=1e-6, atol=1e-5)
    # The weight gradient is the exact one of the reconstruction (of the input where that is no smaller).
    modes = truncated_modes(layer_cls.method, True, x.dim())
    tucker = compress(x, eps, modes, center=center, channel_mode=-1)
    kept_input = tucker.nbytes >= x.numel() * x.element_size()
    recon = x if kept_input else reconstruct(tucker)
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    expected, = torch.autograd.grad(F.linear(recon, linear.weight), linear.weight, grad_output)
    torch.testing.assert_close(gw, expected, rtol=1e-4, atol=1e-5)
    # Ranks meet the explained-variance definition on an exact float64 SVD of each unfolding (of the
    # centred input, plus the mean's one component up to the mode's size, when centred).
    assert len(layer.last_ranks) == len(modes)
    rest = x - x.mean(dim=tuple(range(x.dim() - 1)), keepdim=True) if center else x
    for mode, rank in zip(modes, layer.last_ranks):
        curve = explained_variance_curve(rest, mode)
        if center and rank == x.shape[mode]:  # the mean's component filled the mode: the rest's rank >= size - 1
            assert rank < 3 or curve[rank - 3] < eps
        else:
            assert_rank_meets_threshold(rank - int(center), curve, eps)
    # Records, and what autograd really keeps, equal the storage formula.
    formula = storage_bytes(x.shape, layer.last_ranks, modes, x.dtype)
    assert layer.last_input_shape == tuple(x.shape)
    assert layer.last_vanilla_bytes == x.numel() * 4
    assert kept_input == (formula >= layer.last_vanilla_bytes) == layer.last_kept_whole
    assert layer.last_kept_bytes == min(formula, layer.last_vanilla_bytes)
    kept = non_parameter(saved, layer)
    assert sum(t.numel() * t.element_size() for t in kept) == layer.last_kept_bytes
    assert all(t.data_ptr() != x.data_ptr() for t in kept) != kept_input


def test_the_test_activations_compress_in_most_cases():
    """Guards the test above against passing on inputs that are always kept whole."""
    compressed = 0
    for (layer_cls, shape, eps, center) in itertools.product(LAYERS, SHAPES.values(), (0.7, 0.9), (False, True)):
        _, layer = make_pair(layer_cls, eps, center=center)
        grads(layer, linear_activation(shape, seed=3))
        compressed += not layer.last_kept_whole
    assert compressed >= 30, compressed  # of 32 (SVD keeps the 6 samples of (6, 5, 4, 16) whole at eps 0.9)


@pytest.mark.parametrize('shape', SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize('center', [False, True], ids=['raw', 'centred'])
def test_whole_batch_mode_truncates_the_other_modes_only(shape, center):
    """HOSVD with truncate_batch=False: no batch factor, every other mode truncated; the weight gradient is
    that decomposition's reconstruction's; SVD cannot leave its one mode whole."""
    linear, layer = make_pair(HOSVDLinear, 0.7, center=center, truncate_batch=False)
    assert layer.modes_for(len(shape)) == tuple(range(1, len(shape))) and 'truncate_batch=False' in repr(layer)
    x = linear_activation(shape, seed=3)
    (out, _, gw, _), saved = saved_tensors(lambda: grads(layer, x))
    tucker = compress(x, 0.7, tuple(range(1, x.dim())), center=center, channel_mode=-1)
    assert tucker.factors[0] is None
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    expected, = torch.autograd.grad(F.linear(reconstruct(tucker), linear.weight), linear.weight, grad_output)
    torch.testing.assert_close(gw, expected, rtol=1e-4, atol=1e-5)
    assert layer.last_ranks[0] == x.shape[0] and layer.last_ranks[1:] == tucker.ranks
    assert layer.last_kept_bytes == sum(t.numel() * t.element_size() for t in non_parameter(saved, layer))
    with pytest.raises(ValueError, match='truncates only the batch mode'):
        SVDLinear(4, 4, truncate_batch=False)


def test_truncation_actually_changes_the_weight_gradient():
    """Guards against a layer that silently keeps the input."""
    linear, layer = make_pair(HOSVDLinear, 0.5)
    x = linear_activation((4, 13, 16), seed=3)
    assert not torch.allclose(grads(layer, x)[2], grads(linear, x)[2], rtol=1e-3)
    assert layer.last_kept_whole is False and layer.last_kept_bytes < layer.last_vanilla_bytes


# --- when not to compress, and robustness ---------------------------------------------------------------


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('situation', ['eval', 'no_grad', 'inference_mode', 'frozen_weight'])
def test_plain_linear_when_no_weight_gradient_is_needed(layer_cls, situation):
    linear, layer = make_pair(layer_cls, 0.5)
    x = linear_activation((3, 7, 16)).requires_grad_()
    if situation == 'eval':
        layer.eval()
    if situation == 'frozen_weight':
        linear.weight.requires_grad_(False)
    context = {'no_grad': torch.no_grad, 'inference_mode': torch.inference_mode}.get(situation, torch.enable_grad)
    with context():
        out = layer(x)
        ref = linear(x)
    assert torch.equal(out, ref) and layer.last_ranks is None
    if situation == 'frozen_weight':
        assert torch.equal(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0])


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_frozen_weight_keeps_only_the_weight(layer_cls):
    """Its input still needs a gradient (exact, from the weight alone): nn.Linear's own forward keeps only
    the weight then, and so does the layer."""
    linear, layer = make_pair(layer_cls, 0.8)
    linear.weight.requires_grad_(False)
    x = linear_activation((3, 7, 16)).requires_grad_()

    def input_and_bias_grads(module):
        out = module(x)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        return torch.autograd.grad(out, [x, module.bias], g)
    (ours, saved), theirs = saved_tensors(lambda: input_and_bias_grads(layer)), input_and_bias_grads(linear)
    assert non_parameter(saved, layer) == [] and saved  # the weight alone
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_input_without_grad_keeps_only_the_factors(layer_cls):
    linear, layer = make_pair(layer_cls, 0.8)
    x = linear_activation((4, 13, 16))
    out, saved = saved_tensors(lambda: layer(x))
    assert not any(t.data_ptr() == layer.weight.data_ptr() for t in saved)  # only for an input gradient
    assert sum(t.numel() * t.element_size() for t in saved) == layer.last_kept_bytes
    gw, gb = torch.autograd.grad(out.sum(), [layer.weight, layer.bias])
    assert gw.shape == layer.weight.shape
    torch.testing.assert_close(gb, grads(linear, x, torch.ones_like(out))[3])


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_unbatched_and_all_zero_inputs(layer_cls):
    linear, layer = make_pair(layer_cls, 1.0)
    x = torch.randn(16)
    for ours, theirs in zip(grads(layer, x), grads(linear, x)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert layer.last_input_shape == (1, 16)
    layer.explained_variance = 0.8
    (_, gx, gw, _), saved = saved_tensors(lambda: grads(layer, torch.zeros(3, 7, 16)))
    assert not gw.any() and layer.last_ranks == (0,) * len(method_modes(layer_cls.method, 3))
    assert layer.last_kept_bytes == 0 and sum(t.numel() for t in non_parameter(saved, layer)) == 0


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_input_raises_naming_the_layer(layer_cls, bad):
    _, layer = make_pair(layer_cls, 0.8)
    x = torch.randn(2, 7, 16)
    x[0, 3, 2] = bad
    with pytest.raises(NonFiniteActivationError, match=layer_cls.__name__):
        layer(x)
    layer.layer_name = 'backbone.layers.0.ffn.layers.0.0'
    with pytest.raises(NonFiniteActivationError, match=r'backbone\.layers\.0\.ffn\.layers\.0\.0'):
        layer(x)


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_a_solver_failure_keeps_the_input_for_the_step_and_warns_once(layer_cls, monkeypatch):
    from mmseg_actcomp.ops.convert import compression_stats

    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError('linalg.eigh: The algorithm failed to converge (test)')
    monkeypatch.setattr(torch.linalg, 'eigh', fail)
    monkeypatch.setattr(torch.linalg, 'svd', fail)
    linear, layer = make_pair(layer_cls, 0.8)
    layer.layer_name = 'decode_head.patch_proj'
    x = linear_activation((3, 7, 16))
    with pytest.warns(RuntimeWarning, match=r'decode_head.patch_proj: no eigen-solver converged .*'
                                            r'keeping its input uncompressed'):
        ours, saved = saved_tensors(lambda: grads(layer, x))
    assert layer.last_kept_whole and layer.last_kept_bytes == layer.last_vanilla_bytes == x.numel() * 4
    assert sum(t.numel() * t.element_size() for t in non_parameter(saved, layer)) == x.numel() * 4
    for mine, theirs in zip(ours, grads(linear, x)):  # the input itself: the exact gradients
        torch.testing.assert_close(mine, theirs)
    assert compression_stats({'linear': layer})['kept_whole'] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # once: no second warning
        grads(layer, x)


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_bfloat16_autocast_on_cpu(layer_cls):
    """Under autocast the input, weight and bias are cast as for F.linear, the factors kept in bfloat16
    (decomposed in float32, as outside autocast), the master weight's gradient in float32, all close to
    vanilla bf16 autocast's."""
    linear, layer = make_pair(layer_cls, 0.9)
    x = linear_activation((4, 13, 16), seed=3)
    g = torch.randn(4, 13, 6, generator=torch.Generator().manual_seed(1)).bfloat16()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ours, saved = saved_tensors(lambda: grads(layer, x, g))
        theirs = grads(linear, x, g)
    kept = non_parameter(saved, layer)
    assert not layer.last_kept_whole and kept and all(t.dtype == torch.bfloat16 for t in kept)
    expected = compress(x.bfloat16(), 0.9, truncated_modes(layer_cls.method, True, 3), center=False).tensors
    kept = kept[-len(expected):]  # after the weight autocast cast to bfloat16 (for the input gradient)
    assert all(torch.equal(a, b) for a, b in zip(kept, expected))
    assert ours[0].dtype == theirs[0].dtype == torch.bfloat16
    assert ours[2].dtype == torch.float32
    for mine, ref in zip(ours[:2] + ours[3:], theirs[:2] + theirs[3:]):  # output, input and bias gradients
        assert_close_in_norm(mine, ref, rtol=2e-2)
    # the weight gradient: that of the factors' reconstruction, in bf16 arithmetic
    recon = reconstruct(Tucker.from_tensors(expected, truncated_modes(layer_cls.method, True, 3))).float()
    assert_close_in_norm(ours[2], torch.einsum('bno,bnc->oc', g.float(), recon), rtol=2e-2)


# --- subspaces ------------------------------------------------------------------------------------------


def test_frozen_subspace_estimates_the_token_and_channel_bases_then_projects():
    """subspace='frozen' on (B, N, C) tokens: exact for the first M steps while the token and channel Grams
    (centred along the channel mode) add up, then those modes' factors are the frozen bases (the batch mode
    still decomposed), and the weight gradient is that of the projection onto them."""
    linear = nn.Linear(16, 6)
    layer = HOSVDLinear.from_linear(linear, 0.8, center=True, subspace='frozen', subspace_batches=2)
    inputs = [linear_activation((3, 13, 16), seed=s) for s in range(3)]
    for x in inputs[:2]:
        assert layer.frozen_bases is None
        grads(layer, x)
    bases = layer.frozen_bases
    assert sorted(bases) == [1, 2] and [bases[n].shape[0] for n in (1, 2)] == [13, 16]
    x = inputs[2]
    (out, _, gw, _), saved = saved_tensors(lambda: grads(layer, x))
    factors = non_parameter(saved, layer)[1:]  # core, then U_0, U_1, U_2
    tucker = compress(x, 0.8, (0, 1, 2), center=True, channel_mode=-1, fixed=bases)
    for n in (1, 2):
        torch.testing.assert_close(factors[n], tucker.factors[n])
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    expected, = torch.autograd.grad(F.linear(reconstruct(tucker), linear.weight), linear.weight, grad_output)
    torch.testing.assert_close(gw, expected, rtol=1e-4, atol=1e-5)
    assert layer.subspace_state()['bases'].keys() == {1, 2}
    grads(layer, linear_activation((3, 7, 16)))  # N changed: the token mode exact, no error
    assert layer.last_input_shape == (3, 7, 16) and layer.frozen_bases[1].shape[0] == 13


def test_warm_subspace_starts_from_the_last_token_and_channel_bases(monkeypatch):
    from mmseg_actcomp.compression import decompose, unfold
    layer = HOSVDLinear.from_linear(nn.Linear(48, 8), 0.8, center=False, subspace='warm', subspace_batches=2)
    starts, warm = [], decompose.warm_leading_vectors

    def spy(x, mode, eps, previous, name='activation'):
        starts.append(mode)
        return warm(x, mode, eps, previous, name)
    monkeypatch.setattr(decompose, 'warm_leading_vectors', spy)
    x = low_rank_activation((12, 48, 40, 1), components=8, seed=7).flatten(2).mT.contiguous()  # (12, 40, 48)
    for step, batch in enumerate(x.split(4)):
        _, saved = saved_tensors(lambda: grads(layer, batch))
        assert starts == ([] if step % 2 == 0 else [1, 2]), step
        for n, factor in enumerate(non_parameter(saved, layer)[1:]):
            unfolded = unfold(batch.double(), n)
            assert (factor.double().mT @ unfolded).square().sum() / unfolded.square().sum() >= 0.8 - 1e-5
        starts.clear()


# --- layer API ------------------------------------------------------------------------------------------


def test_base_class_needs_a_method():
    with pytest.raises(TypeError, match='SVDLinear or HOSVDLinear'):
        CompressedLinear(4, 6)


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('value', [0, 1.01, float('nan'), True, '0.8'])
def test_explained_variance_is_validated(layer_cls, value):
    with pytest.raises(ValueError, match=r'explained_variance.*\(0, 1\]'):
        layer_cls(4, 6, explained_variance=value)
    layer = layer_cls(4, 6)
    with pytest.raises(ValueError, match=r'\(0, 1\]'):
        layer.explained_variance = value
    assert layer.explained_variance == 0.8


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_constructor_matches_linear_signature_and_state_dict(layer_cls):
    layer, linear = layer_cls(4, 6, False, None, torch.float64, explained_variance=0.7), nn.Linear(
        4, 6, False, None, torch.float64)
    assert list(layer.state_dict()) == list(linear.state_dict()) == ['weight']
    assert list(layer_cls(4, 6).state_dict()) == list(nn.Linear(4, 6).state_dict()) == ['weight', 'bias']
    layer.load_state_dict(linear.state_dict(), strict=True)
    assert torch.equal(layer.weight, linear.weight) and layer.weight.dtype == torch.float64
    assert (layer.in_features, layer.out_features) == (4, 6)
    assert 'in_features=4, out_features=6, bias=False, explained_variance=0.7, center=True' in repr(layer)
    assert layer.layer_name == layer_cls.__name__
    assert (layer.last_ranks, layer.last_input_shape, layer.last_kept_bytes, layer.last_vanilla_bytes,
            layer.last_kept_energy, layer.last_kept_whole) == (None,) * 6


@pytest.mark.parametrize('layer_cls', LAYERS)
@pytest.mark.parametrize('bias', [True, False])
def test_from_linear_shares_parameters(layer_cls, bias):
    linear = nn.Linear(16, 6, bias=bias).eval()
    layer = layer_cls.from_linear(linear, 0.9, center=False, subspace='exact', subspace_batches=3,
                                  truncate_batch=True)
    assert layer.weight is linear.weight and layer.bias is linear.bias and (layer.bias is None) == (not bias)
    assert not layer.training and layer.explained_variance == 0.9 and layer.center is False
    assert layer.subspace_batches == 3 and layer.weight.device.type == 'cpu'
    optimizer = torch.optim.SGD(linear.parameters(), lr=1.0)
    layer.train()
    layer(linear_activation((4, 7, 16))).sum().backward()
    before = linear.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, linear.weight)
    assert layer.state_dict().keys() == linear.state_dict().keys()
    copied = copy.deepcopy(layer)
    assert copied.explained_variance == 0.9 and copied.weight is not linear.weight
    with pytest.raises(TypeError, match='from_linear expects an nn.Linear, got Conv2d'):
        layer_cls.from_linear(nn.Conv2d(3, 3, 1), 0.8)


def test_registered_in_the_root_and_mmseg_registries():
    from mmengine.registry import MODELS as ROOT, DefaultScope
    import mmseg.models  # noqa: F401  (registers mmseg's modules, as a config's default_scope does)
    from mmseg.registry import MODELS
    layer = ROOT.build(dict(type='HOSVDLinear', in_features=4, out_features=8, explained_variance=0.7))
    assert type(layer) is HOSVDLinear and layer.explained_variance == 0.7 and layer.weight.shape == (8, 4)
    with DefaultScope.overwrite_default_scope('mmseg'):
        layer = MODELS.build(dict(type='SVDLinear', in_features=4, out_features=8, bias=False))
        assert type(layer) is SVDLinear and layer.bias is None


@pytest.mark.parametrize('layer_cls,subspace,message', [
    (SVDLinear, 'frozen', "subspace='frozen' needs method='hosvd'"),
    (HOSVDLinear, 'cold', r"subspace='cold' is not one of \['exact', 'warm', 'frozen'\]"),
])
def test_bad_subspace_arguments_are_named(layer_cls, subspace, message):
    with pytest.raises(ValueError, match=message):
        layer_cls.from_linear(nn.Linear(4, 6), 0.8, subspace=subspace)


# --- memory budget --------------------------------------------------------------------------------------


@pytest.mark.parametrize('layer_cls', LAYERS)
def test_budget_costs_are_what_the_layer_keeps_and_its_gradient_error(layer_cls):
    from mmseg_actcomp.ops.budget import explained_variance_costs
    linear, layer = make_pair(layer_cls, 0.8, center=True)
    x = linear_activation((6, 13, 16), seed=1)
    with torch.no_grad():
        grad_output = torch.randn(linear(x).shape, generator=torch.Generator().manual_seed(2))
    exact, = torch.autograd.grad(linear(x), linear.weight, grad_output)
    costs = explained_variance_costs(layer, x, grad_output, (0.5, 0.8, 1.0))
    for cost in costs:
        layer.explained_variance = cost.explained_variance
        layer.weight.grad = None
        layer(x).backward(grad_output)
        assert cost.kept_bytes == layer.last_kept_bytes
        assert cost.error == pytest.approx(float((layer.weight.grad - exact).norm()), rel=1e-3,
                                           abs=1e-5 * float(exact.norm()))
    assert costs[-1].error <= 1e-4 * float(exact.norm()) and costs[0].error > costs[-1].error
