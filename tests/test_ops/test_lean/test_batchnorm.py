"""Tests of mmseg_actcomp.ops.lean.batchnorm: LeanBatchNorm2d on running statistics (nothing, or the
compressed normalised input, kept) and on batch statistics (the input kept quantized)."""
import copy

import pytest
import torch
from torch import nn

from mmseg_actcomp.compression import hosvd, reconstruct, svd
from mmseg_actcomp.ops import LeanBatchNorm2d
from mmseg_actcomp.ops.lean import channel_inner_products
from conftest import low_rank_activation, saved_tensors
from .common import activations, randomize_bn, run_grads

pytestmark = pytest.mark.usefixtures('single_thread')


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


@pytest.mark.parametrize('bits, tolerance', [(8, 2e-3), (4, 3e-2), (2, 5e-2)])
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
