"""Tests of mmseg_actcomp.ops.lean.relu: bit packing and PackedMaskReLU, bit-identical to torch's ReLU and
ReLU6 while keeping only the packed mask."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmseg_actcomp.ops import PackedMaskReLU
from mmseg_actcomp.ops.lean import pack_bits, unpack_bits
from conftest import saved_tensors
from .common import assert_bit_identical

pytestmark = pytest.mark.usefixtures('single_thread')


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
