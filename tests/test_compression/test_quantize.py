"""Per-plane uniform quantization (the core of a region BN that keeps its input in ``input_bits``)."""
import pytest
import torch

from mmseg_actcomp.compression import (QUANTIZATION_BITS, dequantize, pack_codes, quantize, unpack_codes,
                                       validate_bits)


@pytest.mark.parametrize('bits', QUANTIZATION_BITS)
@pytest.mark.parametrize('numel', [0, 1, 7, 8, 9, 33])
def test_codes_pack_and_unpack_exactly(bits, numel):
    codes = torch.randint(0, 2 ** bits, (numel,), generator=torch.Generator().manual_seed(numel),
                          dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-numel * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, numel), codes)


def test_codes_are_little_endian_within_a_byte():
    assert pack_codes(torch.tensor([1, 2, 3, 0, 1], dtype=torch.uint8), 2).tolist() == [1 | 2 << 2 | 3 << 4, 1]
    assert pack_codes(torch.tensor([5, 12], dtype=torch.uint8), 4).tolist() == [5 | 12 << 4]


@pytest.mark.parametrize('bits', [0, 3, 16, True, 8.5, None])
def test_bad_bit_widths_are_named(bits):
    with pytest.raises(ValueError, match=rf'bits={bits!r} is not one of \[1, 2, 4, 8\]'):
        validate_bits(bits)


@pytest.mark.parametrize('bits', [2, 4, 8])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize('channels_last', [False, True])
def test_error_is_at_most_half_a_step_of_each_plane(bits, dtype, channels_last):
    g = torch.Generator().manual_seed(bits)
    x = (torch.randn(3, 5, 6, 7, generator=g) * torch.rand(3, 5, 1, 1, generator=g) * 10
         + torch.randn(3, 5, 1, 1, generator=g) * 4).to(dtype)
    x[1, 2] = 3.0  # a constant plane is kept exactly
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    q = quantize(x, bits)
    y = dequantize(q)
    assert y.shape == x.shape and y.dtype == dtype
    span = x.float().amax((2, 3)) - x.float().amin((2, 3))
    half_step = span / (2 ** bits - 1) / 2
    # float32 arithmetic, then rounding to the tensor's dtype, add their own tiny error
    slack = 1e-5 * x.float().abs().amax((2, 3)) + (x.float().abs().amax((2, 3)) * 2 ** -8
                                                    if dtype == torch.bfloat16 else 0)
    error = (y.float() - x.float()).abs().amax((2, 3))
    assert (error <= half_step + slack).all()
    assert torch.equal(y[1, 2], x[1, 2])
    assert q.nbytes == -(-x.numel() * bits // 8) + 2 * 4 * 3 * 5


def test_values_on_the_grid_come_back_exactly():
    low = torch.tensor([[-1.5, 2.0]])
    step = torch.tensor([[0.25, 0.5]])
    codes = torch.randint(0, 256, (1, 2, 4, 4), generator=torch.Generator().manual_seed(0)).float()
    codes[..., 0, 0], codes[..., 0, 1] = 0, 255  # the range is spanned
    x = low[..., None, None] + codes * step[..., None, None]
    assert torch.equal(dequantize(quantize(x, 8)), x)


def test_quantize_rejects_what_it_cannot_hold():
    with pytest.raises(ValueError, match=r'floating \(B, C, \.\.\.\) tensor, got torch.int64 of shape \(2, 3\)'):
        quantize(torch.zeros(2, 3, dtype=torch.long), 8)
    with pytest.raises(ValueError, match=r'shape \(4,\)'):
        quantize(torch.zeros(4), 8)
