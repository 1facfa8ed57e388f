"""Tests of mmseg_actcomp.ops.lean.frozen_conv: LeanConv2d keeps only its weight while it is frozen."""

import pytest
import torch
from torch import nn

from mmseg_actcomp.ops import LeanConv2d
from conftest import saved_tensors
from .common import activations, run_grads

pytestmark = pytest.mark.usefixtures('single_thread')


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
