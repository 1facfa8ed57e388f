"""Tests of mmseg_actcomp.ops.lean: bit-packed ReLU masks, running-statistics BN, frozen convs,
regenerated dropout, and make_lean on mmseg's ResNet BasicBlock and an mmcv ConvModule ASPP branch, whose
saved bytes must equal exactly the compressed factors plus the packed masks."""
import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmseg.models.backbones.resnet import BasicBlock
from torch import nn

from mmseg_actcomp.compression import hosvd, reconstruct, svd
from mmseg_actcomp.memory import measure_step
from mmseg_actcomp.ops import (HOSVDConv2d, LeanAdaptiveAvgPool2d, LeanBatchNorm2d, LeanConv2d,
                               PackedMaskReLU, RegeneratedDropout, make_lean)
from mmseg_actcomp.ops.lean import channel_inner_products, pack_bits, unpack_bits
from conftest import low_rank_activation, saved_tensors

pytestmark = pytest.mark.usefixtures('single_thread')

INT_OF = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
          torch.float64: torch.int64}


def assert_bit_identical(actual, expected):
    """Same shape, dtype and bits (NaN payloads and the sign of zero included)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual.contiguous().view(INT_OF[actual.dtype]),
                       expected.contiguous().view(INT_OF[expected.dtype]))


def activations(saved, module):
    """The saved tensors that are none of ``module``'s parameters and buffers."""
    own = {t.data_ptr() for t in list(module.parameters()) + list(module.buffers())}
    return [t for t in saved if t.data_ptr() not in own]


def saved_bytes(model, x):
    """Bytes of the activation storages one forward of ``model`` on ``x`` keeps for backward (each
    storage once, parameters and buffers left out), and the bytes per backward op; runs the backward."""
    # A plain sum: its backward keeps nothing, so every byte counted is the model's.
    step = measure_step(model, lambda: model(x).sum(), [''])
    return step.saved['total'], {op: row['bytes'] for op, row in step.saved['per_op']['rest'].items()}


def randomize_bn(model, seed=0):
    """Non-trivial running statistics and affine parameters for every BN of ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                c = bn.num_features
                bn.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def run_grads(model, x, seed=1):
    """Gradients of ``<model(x), g>`` (g fixed by ``seed``) w.r.t. ``x`` and every trainable parameter."""
    x = x.detach().clone().requires_grad_()
    out = model(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, [x] + params, g)
    return out, dict(zip(['input'] + names, grads))


# --- bit packing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('shape', [(3, 5, 7), (2, 3, 4, 4), (1,), (0, 3), (17,)])
def test_pack_unpack_roundtrip(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(mask.numel() / 8),)
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


def test_pack_is_little_endian_per_byte_and_channels_last_safe():
    assert pack_bits(torch.tensor([True, False, True] + [False] * 5 + [True])).tolist() == [5, 1]
    mask = torch.randn(2, 3, 5, 4).to(memory_format=torch.channels_last) > 0
    assert torch.equal(pack_bits(mask), pack_bits(mask.contiguous()))
    assert torch.equal(unpack_bits(pack_bits(mask), mask.shape), mask)


# --- ReLU -----------------------------------------------------------------------------------------------


def special_values_input(dtype, channels_last, nan=True, shape=(3, 5, 7, 3)):
    """Random values with exact zeros, -0.0, 6.0 (the ReLU6 edge), +-inf and NaN; 315 elements (odd)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 4
    flat = x.view(-1)
    flat[::7] = 0.0
    flat[1::11] = -0.0
    flat[2::13] = 6.0
    flat[4::19] = float('inf')
    flat[5::23] = -float('inf')
    if nan:
        flat[3::17] = float('nan')
    x = x.to(dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize('inplace', [False, True])
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('reference', [nn.ReLU, nn.ReLU6])
def test_packed_relu_bit_identical_to_torch(reference, dtype, channels_last, inplace):
    # NaN: see test_packed_relu6_lets_the_gradient_through_nan.
    x = special_values_input(dtype, channels_last, nan=reference is nn.ReLU)
    grad_output = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    results = []
    for layer in (reference(inplace), PackedMaskReLU.from_module(reference(inplace))):
        leaf = x.clone().requires_grad_()
        source = leaf * 1  # an in-place ReLU needs a non-leaf
        out, saved = saved_tensors(lambda: layer(source))
        assert (out is source) == inplace
        grad, = torch.autograd.grad(out, leaf, grad_output)
        results.append((out.detach(), grad, saved))
    (out, grad, _), (lean_out, lean_grad, lean_saved) = results
    assert_bit_identical(lean_out, out)
    assert_bit_identical(lean_grad, grad)
    assert [(t.dtype, t.shape) for t in lean_saved] == [(torch.uint8, (math.ceil(x.numel() / 8),))]


def test_packed_relu6_lets_the_gradient_through_nan():
    """Torch's own ReLU6 gradient at NaN depends on where the element falls: hardtanh_backward's rule
    ``x <= min or x >= max ? 0 : grad`` (its scalar CPU loop, its CUDA kernel) passes it, the vectorised
    CPU loop zeroes it. The packed mask follows the rule, as ReLU does everywhere."""
    x = torch.tensor([float('nan'), 3.0, 6.0, 0.0], requires_grad=True)
    grad, = torch.autograd.grad(PackedMaskReLU(max_value=6.0)(x), x, torch.full((4,), 2.0))
    assert grad.tolist() == [2.0, 2.0, 0.0, 0.0]
    scalar_path, = torch.autograd.grad(F.relu6(x), x, torch.full((4,), 2.0))
    assert torch.equal(grad, scalar_path)


def test_packed_relu_in_place_on_a_view():
    leaf = torch.randn(4, 6, requires_grad=True)
    whole = leaf * 2
    out = PackedMaskReLU(inplace=True)(whole[:, 2:4])
    whole.sum().backward()
    expected = torch.full_like(leaf, 2.0)
    expected[:, 2:4] *= (leaf[:, 2:4] > 0)
    assert torch.equal(leaf.grad, expected) and out.data_ptr() == whole[:, 2:].data_ptr()


def test_packed_relu_without_grad_is_plain_relu_and_keeps_nothing():
    x = torch.randn(2, 3, 4, 4)
    out, saved = saved_tensors(lambda: PackedMaskReLU(max_value=6.0)(x))
    assert saved == [] and torch.equal(out, F.relu6(x))
    with torch.no_grad():
        y = x.clone().requires_grad_()
        assert PackedMaskReLU()(y).grad_fn is None


def test_packed_relu_in_place_on_a_leaf_fails_like_torch():
    leaf = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match='leaf'):
        nn.ReLU(inplace=True)(leaf)
    with pytest.raises(RuntimeError, match='leaf'):
        PackedMaskReLU(inplace=True)(leaf)


# --- dropout --------------------------------------------------------------------------------------------


@pytest.mark.parametrize('channelwise', [False, True])
def test_dropout_backward_uses_the_forward_mask_and_keeps_no_tensor(channelwise):
    p = 0.3
    layer = RegeneratedDropout(p, channelwise)
    x = (torch.rand(4, 16, 5, 6) + 1).requires_grad_()  # no zeros: the output's zeros are the mask
    out, saved = saved_tensors(lambda: layer(x))
    assert saved == []
    kept = out.detach() != 0
    if channelwise:  # whole (b, c) channels are kept or dropped
        per_channel = kept.flatten(2)
        assert torch.equal(per_channel.all(2), per_channel.any(2))
    # torch's noise: bernoulli(1 - p) divided in place by 1 - p, in the input's dtype
    noise = kept.to(x.dtype) * torch.ones((), dtype=x.dtype).div_(1 - p)
    assert torch.equal(out.detach(), x.detach() * noise)
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grad, = torch.autograd.grad(out, x, grad_output)
    assert torch.equal(grad, grad_output * noise)


@pytest.mark.parametrize('channelwise', [False, True])
def test_dropout_drop_rate_and_reproducibility_from_the_global_seed(channelwise):
    p = 0.25
    layer = RegeneratedDropout(p, channelwise)
    x = torch.ones(16, 256, 2, 2)
    torch.manual_seed(0)
    first = layer(x)
    torch.manual_seed(0)
    assert torch.equal(layer(x), first)
    assert not torch.equal(layer(x), first)  # the next call draws a new seed
    assert abs((first == 0).float().mean().item() - p) < 0.03
    assert set(first.unique().tolist()) == {0.0, torch.ones(()).div_(1 - p).item()}


def test_dropout_eval_identity_edge_probabilities_inplace_and_half():
    x = torch.randn(2, 3, 4, 4)
    assert RegeneratedDropout(0.5).eval()(x) is x
    assert RegeneratedDropout(0.0)(x) is x
    assert torch.equal(RegeneratedDropout(1.0, channelwise=True)(x), x * 0)
    leaf = torch.rand(2, 3, 4, 4, requires_grad=True)
    source = leaf * 1
    out = RegeneratedDropout(0.5, inplace=True)(source)
    assert out is source
    out.sum().backward()
    assert torch.equal(leaf.grad, (out.detach() != 0).float() * 2)
    half = RegeneratedDropout(0.5, channelwise=True)(torch.ones(2, 8, 3, 3, dtype=torch.float16))
    assert half.dtype == torch.float16 and set(half.unique().tolist()) <= {0.0, 2.0}
    with pytest.raises(ValueError, match='between 0 and 1'):
        RegeneratedDropout(1.5)


def test_dropout_from_module_keeps_the_settings():
    twin = RegeneratedDropout.from_module(nn.Dropout2d(0.1).eval())
    assert (twin.p, twin.channelwise, twin.inplace, twin.training) == (0.1, True, False, False)
    twin = RegeneratedDropout.from_module(nn.Dropout(0.2, inplace=True))
    assert (twin.p, twin.channelwise, twin.inplace, twin.training) == (0.2, False, True, True)


# --- batch norm -----------------------------------------------------------------------------------------


def bn_pair(channels=6, dtype=torch.float32, train_affine=True, affine=True):
    """A stock BN in eval mode with random statistics and its lean twin sharing everything."""
    bn = nn.BatchNorm2d(channels, affine=affine, dtype=dtype)
    if affine:
        randomize_bn(bn)
        bn.weight.requires_grad_(train_affine)
        bn.bias.requires_grad_(train_affine)
    bn.eval()
    return bn, LeanBatchNorm2d.from_bn(bn, 0.8, 'hosvd')


def test_lean_bn_shares_parameters_buffers_and_state_dict_keys():
    bn, lean = bn_pair()
    assert lean.weight is bn.weight and lean.bias is bn.bias
    assert all(getattr(lean, n) is getattr(bn, n)
               for n in ('running_mean', 'running_var', 'num_batches_tracked'))
    assert list(lean.state_dict()) == list(bn.state_dict()) and not lean.training
    assert (lean.eps, lean.momentum) == (bn.eps, bn.momentum)
    with pytest.raises(ValueError, match='method'):
        LeanBatchNorm2d.from_bn(bn, 0.8, 'tucker')
    with pytest.raises(ValueError, match='explained_variance'):
        LeanBatchNorm2d.from_bn(bn, 0.0, 'svd')


@pytest.mark.parametrize('channels_last', [False, True])
def test_lean_bn_with_frozen_affine_keeps_nothing_of_its_input(channels_last):
    bn, lean = bn_pair(dtype=torch.float64, train_affine=False)
    x = low_rank_activation((3, 6, 7, 5), dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    (out, grads), saved = saved_tensors(lambda: run_grads(lean, x))
    expected_out, expected = run_grads(bn, x)
    assert torch.equal(out, expected_out)
    torch.testing.assert_close(grads['input'], expected['input'], rtol=1e-14, atol=0)
    assert activations(saved, lean) == [] and saved  # only the weight and running variance


@pytest.mark.parametrize('method', ['hosvd', 'svd', 'none'])
def test_lean_bn_trainable_affine_exact_at_full_threshold(method):
    bn, lean = bn_pair(dtype=torch.float64)
    lean.explained_variance, lean.method = 1.0, method
    x = low_rank_activation((3, 6, 7, 5), dtype=torch.float64)
    out, grads = run_grads(lean, x)
    expected_out, expected = run_grads(bn, x)
    assert torch.equal(out, expected_out) and list(grads) == ['input', 'weight', 'bias']
    for name in grads:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('method', ['hosvd', 'svd', 'none'])
def test_lean_bn_trainable_affine_keeps_only_the_compressed_normalised_input(method):
    bn, lean = bn_pair(channels=32)
    lean.method = method
    x = low_rank_activation((4, 32, 12, 10), components=10)
    (_, grads), saved = saved_tensors(lambda: run_grads(lean, x))
    _, expected = run_grads(bn, x)
    kept = activations(saved, lean)
    assert sum(t.numel() * t.element_size() for t in kept) == lean.last_kept_bytes
    assert lean.last_vanilla_bytes == x.numel() * 4
    if method == 'none':
        assert lean.last_kept_bytes == lean.last_vanilla_bytes
    else:
        # 4 batch samples: the batch-mode SVD keeps 2 of them; HOSVD truncates every mode.
        assert lean.last_kept_bytes < lean.last_vanilla_bytes / (4 if method == 'hosvd' else 1)
        assert not torch.equal(grads['weight'], expected['weight'])
    # Input and bias gradients do not depend on what is kept.
    torch.testing.assert_close(grads['input'], expected['input'])
    torch.testing.assert_close(grads['bias'], expected['bias'])
    error = (grads['weight'] - expected['weight']).norm() / expected['weight'].norm()
    assert error < 0.5


def test_lean_bn_in_training_mode_is_stock_batch_norm():
    bn, _ = bn_pair()
    reference = copy.deepcopy(bn).train()
    lean = LeanBatchNorm2d.from_bn(bn.train())
    x = low_rank_activation((3, 6, 7, 5))
    out, grads = run_grads(lean, x)
    expected_out, expected = run_grads(reference, x)
    assert torch.equal(out, expected_out)
    for name in grads:
        assert torch.equal(grads[name], expected[name])
    assert torch.equal(bn.running_mean, reference.running_mean)
    assert int(bn.num_batches_tracked) == int(reference.num_batches_tracked) == 1


def grid_activation(shape, bits=8, seed=0):
    """A ``(B, C, H, W)`` tensor whose every ``(b, c)`` plane lies on its own ``bits``-bit grid spanning it:
    quantizing it loses nothing."""
    g = torch.Generator().manual_seed(seed)
    levels = 2 ** bits - 1
    codes = torch.randint(0, levels + 1, shape, generator=g).float()
    codes[..., 0, 0], codes[..., 0, 1] = 0, levels
    low = torch.randn(shape[:2], generator=g)[..., None, None]
    step = (torch.rand(shape[:2], generator=g) * 0.1 + 0.01)[..., None, None]
    return low + codes * step


@pytest.mark.parametrize('momentum', [0.1, None])
@pytest.mark.parametrize('channels_last', [False, True])
def test_lean_bn_on_batch_statistics_with_input_bits_keeps_the_quantized_input(momentum, channels_last):
    bn, _ = bn_pair(channels=8)
    bn.momentum = momentum
    reference = copy.deepcopy(bn).train()
    lean = LeanBatchNorm2d.from_bn(bn.train(), input_bits=8)
    x = grid_activation((3, 8, 7, 5))
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    for _ in range(2):  # the second step checks the running statistics' update rule again
        (out, grads), saved = saved_tensors(lambda: run_grads(lean, x))
        expected_out, expected = run_grads(reference, x)
        assert torch.equal(out, expected_out)
        for name in ('running_mean', 'running_var', 'num_batches_tracked'):
            assert torch.equal(getattr(bn, name), getattr(reference, name))
    # the input lies on the grid: torch's own backward on the same numbers
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-6, atol=1e-7)
    kept = sum(t.numel() * t.element_size() for t in activations(saved, lean))
    assert kept == x.numel() + 2 * 4 * 3 * 8 + 2 * 4 * 8  # codes, plane ranges, batch mean and inverse std


@pytest.mark.parametrize('bits, tolerance', [(8, 2e-3), (4, 3e-2)])
def test_lean_bn_on_batch_statistics_gradient_error_follows_the_bits(bits, tolerance):
    bn, _ = bn_pair(channels=8)
    reference = copy.deepcopy(bn).train()
    lean = LeanBatchNorm2d.from_bn(bn.train(), input_bits=bits)
    x = low_rank_activation((4, 8, 9, 7), components=5, noise=0.3)
    _, grads = run_grads(lean, x)
    _, expected = run_grads(reference, x)
    assert torch.equal(grads['bias'], expected['bias'])
    error = (grads['input'] - expected['input']).norm() / expected['input'].norm()
    assert 0 < error < tolerance


def test_lean_bn_input_bits_validated_and_without_running_statistics():
    with pytest.raises(ValueError, match=r'input_bits: bits=3 is not one of \[1, 2, 4, 8\] \(or None'):
        LeanBatchNorm2d(4, input_bits=3)
    bn = nn.BatchNorm2d(6, track_running_stats=False)
    lean = LeanBatchNorm2d.from_bn(bn, input_bits=8).eval()  # no running statistics: batch ones
    x = grid_activation((2, 6, 4, 4))
    (out, grads), saved = saved_tensors(lambda: run_grads(lean, x))
    expected_out, expected = run_grads(bn.eval(), x)
    assert torch.equal(out, expected_out)
    torch.testing.assert_close(grads['input'], expected['input'], rtol=1e-6, atol=1e-7)
    assert sum(t.numel() for t in activations(saved, lean) if t.dtype == torch.uint8) == x.numel()


def test_lean_bn_without_affine_and_in_half_precision():
    bn, lean = bn_pair(affine=False)
    x = low_rank_activation((2, 6, 5, 5)).requires_grad_()
    out, saved = saved_tensors(lambda: lean(x))
    assert activations(saved, lean) == []
    torch.testing.assert_close(out, bn(x))
    bn, lean = bn_pair(train_affine=True)
    x = low_rank_activation((2, 6, 5, 5)).half()
    out, grads = run_grads(lean, x)
    expected_out, expected = run_grads(bn, x)
    assert out.dtype == grads['input'].dtype == torch.float16 and grads['weight'].dtype == torch.float32
    assert torch.equal(out, expected_out)
    torch.testing.assert_close(grads['input'], expected['input'], rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize('decompose', [hosvd, svd])
def test_channel_inner_products_contract_the_reconstruction(decompose):
    x = low_rank_activation((3, 5, 6, 4), dtype=torch.float64)
    tucker = decompose(x, 0.7)
    grad = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(channel_inner_products(tucker, grad),
                               (grad * reconstruct(tucker)).sum((0, 2, 3)), rtol=1e-12, atol=1e-12)


# --- frozen convolution ---------------------------------------------------------------------------------


def test_lean_conv_with_frozen_weight_keeps_only_the_weight():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, dtype=torch.float64)
    conv.weight.requires_grad_(False)
    lean = LeanConv2d.from_conv(conv)
    assert lean.weight is conv.weight and list(lean.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    (out, grads), saved = saved_tensors(lambda: run_grads(lean, x))
    expected_out, expected = run_grads(conv, x)
    assert torch.equal(out, expected_out) and list(grads) == ['input', 'bias']
    for name in grads:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-14, atol=1e-14)
    assert activations(saved, lean) == []
    (_, unbatched), saved = saved_tensors(lambda: run_grads(lean, x[0]))
    assert activations(saved, lean) == [] and unbatched['input'].shape == x[0].shape


def test_lean_conv_under_autocast_casts_like_a_convolution():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    conv.requires_grad_(False)
    lean = LeanConv2d.from_conv(conv)
    x = torch.randn(2, 4, 5, 5)
    with torch.autocast('cpu', torch.bfloat16):
        (out, grads), saved = saved_tensors(lambda: run_grads(lean, x))
        expected_out, expected = run_grads(conv, x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected_out)
    torch.testing.assert_close(grads['input'], expected['input'])
    assert [t.dtype for t in saved] == [torch.bfloat16]  # the cast weight


@pytest.mark.parametrize('situation', ['trainable', 'reflect-padding', 'string-padding'])
def test_lean_conv_is_stock_where_it_cannot_help(situation):
    conv = nn.Conv2d(4, 6, 3, padding='same' if situation == 'string-padding' else 1,
                     padding_mode='reflect' if situation == 'reflect-padding' else 'zeros')
    conv.weight.requires_grad_(situation == 'trainable')
    lean = LeanConv2d.from_conv(conv)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    out, saved = saved_tensors(lambda: lean(x))
    assert out.grad_fn.name() == 'ConvolutionBackward0' and torch.equal(out, conv(x))


# --- adaptive average pooling -------------------------------------------------------------------------


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('output_size', [2, 3, 6, (None, 3), 1])
def test_lean_adaptive_pool_bit_identical_and_keeps_nothing(output_size, channels_last):
    x = torch.randn(2, 5, 13, 11, generator=torch.Generator().manual_seed(0))
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    stock = nn.AdaptiveAvgPool2d(output_size)
    lean = LeanAdaptiveAvgPool2d.from_module(stock)
    (out, grads), saved = saved_tensors(lambda: run_grads(lean, x))
    expected_out, expected = run_grads(stock, x)
    assert saved == []
    assert_bit_identical(out, expected_out)
    assert_bit_identical(grads['input'], expected['input'])
    assert grads['input'].stride() == expected['input'].stride()


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
def test_region_bns_on_batch_statistics_keep_their_input_in_4_bits_by_default():
    """Without freeze_region_norm_stats the region's trainable BNs train on batch statistics, as the
    config says: they keep their input in 4 bits by default, an eighth of what stock BN keeps (the
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
    # 4 bits for float32: an eighth, plus per BN its plane ranges and batch statistics (kilobytes)
    bytes_4, bytes_whole = region_bn['default']['bytes'], region_bn[None]['bytes']
    assert bytes_whole / 8 < bytes_4 < bytes_whole / 8 + region_bn[None]['saves'] * 16 * 1024
