"""Tests of mmseg_actcomp.ops.lean.pooling: LeanAdaptiveAvgPool2d keeps nothing of its input."""

import pytest
import torch
from torch import nn

from mmseg_actcomp.ops import LeanAdaptiveAvgPool2d
from conftest import saved_tensors
from .common import assert_bit_identical, run_grads

pytestmark = pytest.mark.usefixtures('single_thread')


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
