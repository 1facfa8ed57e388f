"""Tests of mmseg_actcomp.ops.precise_bn: population statistics for BNs about to run on them."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from mmseg_actcomp.ops.precise_bn import precise_norm_stats, preserved_rng


def two_bn_net():
    """conv -> BN (frozen, not re-estimated) -> ReLU -> conv -> BN (the one re-estimated)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5))
    with torch.no_grad():  # statistics as a source task would have left them: far from this data's
        for bn in (net[1], net[4]):
            bn.running_mean.fill_(3.0)
            bn.running_var.fill_(0.25)
    return net


def batches(count, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 3, 8, 8, generator=g) * 2 + 1 for _ in range(count)]


def test_statistics_are_the_averages_of_the_batch_statistics():
    net = two_bn_net()
    net.train()
    frozen_before = (net[1].running_mean.clone(), net[1].running_var.clone())
    data = batches(3)
    assert precise_norm_stats(net, [net[4]], data, net, 3) == 3
    # modes and momentum are restored
    assert all(m.training for m in net.modules()) and net[4].momentum == 0.1
    # what the re-estimated BN sees: its input with the frozen BN on its running statistics
    with torch.no_grad():
        inputs = [net[3](net[2](net[1].eval()(net[0](x)))) for x in data]
    means = torch.stack([z.mean(dim=(0, 2, 3)) for z in inputs])
    variances = torch.stack([z.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for z in inputs])
    torch.testing.assert_close(net[4].running_mean, means.mean(0))
    torch.testing.assert_close(net[4].running_var, variances.mean(0))
    assert torch.equal(net[1].running_mean, frozen_before[0])  # the other BN ran on its statistics
    assert torch.equal(net[1].running_var, frozen_before[1])


def test_random_states_are_left_as_they_were():
    net = two_bn_net()

    def forward(x):  # draws from every global generator, as an augmentation pipeline does
        random.random(), np.random.rand(), torch.rand(1)
        return net(x)

    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    precise_norm_stats(net, [net[4]], batches(2), forward, 2)
    after = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    assert after == (random.random(), np.random.rand(), torch.rand(1))
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    with preserved_rng():
        random.random(), np.random.rand(), torch.rand(3)
    assert random.getstate() == states[0] and (np.random.get_state()[1] == states[1]).all()
    assert torch.equal(torch.get_rng_state(), states[2])


def test_only_num_batches_are_drawn_from_an_endless_iterator():
    net = two_bn_net()
    drawn = []

    def endless():
        while True:
            drawn.append(1)
            yield torch.randn(2, 3, 8, 8)
    precise_norm_stats(net, [net[4]], endless(), net, 4)
    assert len(drawn) == 4


def test_running_out_of_batches_raises_and_leaves_the_statistics():
    net = two_bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match='ran out after 2 of num_batches=5'):
        precise_norm_stats(net, [net[4]], batches(2), net, 5)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net[4].momentum == 0.1


@pytest.mark.parametrize('bad', [0, -1, 2.0, True, None])
def test_bad_num_batches_is_named(bad):
    net = two_bn_net()
    with pytest.raises(ValueError, match=f'num_batches={bad!r} must be an integer >= 1'):
        precise_norm_stats(net, [net[4]], batches(1), net, bad)


def test_a_bn_without_running_statistics_is_refused():
    bn = nn.BatchNorm2d(3, track_running_stats=False)
    with pytest.raises(ValueError, match='keep no running statistics'):
        precise_norm_stats(bn, [bn], batches(1), bn, 1)
