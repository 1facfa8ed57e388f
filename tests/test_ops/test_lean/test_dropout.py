"""Tests of mmseg_actcomp.ops.lean.dropout: RegeneratedDropout keeps a seed, not the mask."""

import pytest
import torch
from torch import nn

from mmseg_actcomp.ops import RegeneratedDropout
from mmseg_actcomp.ops.lean import is_plain_dropout
from conftest import saved_tensors

pytestmark = pytest.mark.usefixtures('single_thread')


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


def test_dropout_from_module_takes_mmcv_dropout_not_a_subclass_with_its_own_forward():
    from mmcv.cnn.bricks.drop import Dropout as MMCVDropout

    class Scaled(nn.Dropout):
        def forward(self, x):
            return super().forward(x) * 2

    twin = RegeneratedDropout.from_module(MMCVDropout(0.3, inplace=True))
    assert (twin.p, twin.channelwise, twin.inplace) == (0.3, False, True)
    assert is_plain_dropout(nn.Dropout2d()) and not is_plain_dropout(Scaled()) and not is_plain_dropout(nn.ReLU())
    with pytest.raises(TypeError, match='expects nn.Dropout or nn.Dropout2d, got Scaled'):
        RegeneratedDropout.from_module(Scaled())


def timm_drop_path(x, drop_prob=0.0, training=False, scale_by_keep=True):
    """timm's ``drop_path`` (timm.layers.drop, verbatim; timm is not installed here)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


@pytest.mark.parametrize('kind', ['mmcv', 'timm'])
def test_drop_path_keeps_one_factor_per_sample_only(kind):
    """Stochastic depth scales each sample by one random number: autograd keeps that ``(B, 1, ..., 1)``
    tensor and nothing full-size, so make_lean leaves it alone."""
    from mmcv.cnn.bricks.drop import DropPath
    torch.manual_seed(0)
    x = torch.randn(8, 10, 16, requires_grad=True)
    layer = DropPath(0.5) if kind == 'mmcv' else (lambda t: timm_drop_path(t, 0.5, True))
    out, saved = saved_tensors(lambda: layer(x))
    assert [tuple(t.shape) for t in saved] == [(8, 1, 1)]
    dropped = (out == 0).flatten(1).all(1)
    assert dropped.any() and not dropped.all()  # some samples dropped whole, the others scaled by 2
    torch.testing.assert_close(out[~dropped], x[~dropped] * 2)
