"""Tests of mmseg_actcomp.ops.lean.prelu: PackedMaskPReLU keeps a packed mask while its weight is frozen."""
import math

import pytest
import torch
from torch import nn

from mmseg_actcomp.ops import PackedMaskPReLU, make_lean
from mmseg_actcomp.ops.lean import PackedMaskPReLUFunction
from conftest import saved_tensors
from .common import activations, assert_bit_identical, run_grads

pytestmark = pytest.mark.usefixtures('single_thread')


def _prelu(num_parameters, seed=0):
    stock = nn.PReLU(num_parameters)
    with torch.no_grad():
        stock.weight.copy_(torch.rand(num_parameters, generator=torch.Generator().manual_seed(seed)) + 0.1)
    return stock


@pytest.mark.parametrize('num_parameters', [1, 5])
def test_frozen_prelu_bit_identical_and_keeps_a_packed_mask(num_parameters):
    x = torch.randn(2, 5, 7, 3, generator=torch.Generator().manual_seed(1))
    x[0, 0, 0, :2] = 0.0  # x = 0 takes the slope, as in torch
    x[1, 2, 3, 1] = float('nan')
    stock = _prelu(num_parameters).requires_grad_(False)
    lean = PackedMaskPReLU.from_module(stock)
    assert lean.weight is stock.weight and list(lean.state_dict()) == ['weight']
    (out, grads), saved = saved_tensors(lambda: run_grads(lean, x))
    expected_out, expected = run_grads(stock, x)
    assert_bit_identical(out, expected_out)
    assert_bit_identical(grads['input'], expected['input'])
    kept = activations(saved, lean)
    assert [(t.dtype, t.numel()) for t in kept] == [(torch.uint8, math.ceil(x.numel() / 8))]


def test_trainable_prelu_is_torchs_own_with_its_weight_gradient():
    x = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(2))
    stock = _prelu(5)
    lean = PackedMaskPReLU.from_module(stock)
    (out, grads), saved = saved_tensors(lambda: run_grads(lean, x))
    expected_out, expected = run_grads(stock, x)
    assert_bit_identical(grads['weight'], expected['weight'])
    assert_bit_identical(grads['input'], expected['input'])
    assert any(t.shape == x.shape for t in activations(saved, lean))  # the input, for the weight gradient


def test_packed_mask_prelu_gradcheck():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = x.masked_fill(x.abs() < 0.05, 0.3).requires_grad_()  # away from the kink
    weight = torch.tensor([0.25, -0.5, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: PackedMaskPReLUFunction.apply(t, weight), (x,))


def test_make_lean_swaps_prelu_and_rejects_other_types():
    block = nn.Sequential(nn.Conv2d(3, 4, 1), _prelu(4))
    lean = make_lean(block, 0.8, 'hosvd')
    assert type(block[1]) is PackedMaskPReLU and lean['1'] is block[1]
    assert make_lean(block, 0.8, 'hosvd')['1'] is block[1]  # idempotent
    with pytest.raises(TypeError, match='expects nn.PReLU, got ReLU'):
        PackedMaskPReLU.from_module(nn.ReLU())
