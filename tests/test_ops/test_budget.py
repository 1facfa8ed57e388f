"""mmseg_actcomp.ops.budget and FineTuneRegion's memory budget: costs per threshold, the knapsack, the
calibration pass that leaves the model as it was, and kept bytes within the budget afterwards."""
import copy
import itertools
import math
import os.path as osp
import random

import pytest
import torch
from torch import nn

from conftest import REPO, build_model_from_config, low_rank_activation
from mmseg_actcomp.ops import HOSVDConv2d, SVDConv2d
from mmseg_actcomp.ops.budget import (BUDGET_UNITS, EXPLAINED_VARIANCE_GRID, MIB, BudgetInfeasibleError, Cost,
                                      choose_explained_variance, explained_variance_costs)
from mmseg_actcomp.ops.region import FineTuneRegion

pytestmark = pytest.mark.usefixtures('single_thread')


# ------------------------------------------------------------------------------------------- knapsack
def random_costs(seed, max_bytes):
    rng = random.Random(seed)
    costs = {}
    for layer in range(rng.randint(1, 4)):
        options = sorted(rng.sample(range(1, max_bytes), rng.randint(2, 6)))
        errors = sorted((rng.random() * 10 for _ in options), reverse=True)
        # not always monotone: a real cost table need not be
        if rng.random() < 0.3:
            errors[0], errors[-1] = errors[-1], errors[0]
        costs[f'layer{layer}'] = [Cost(eps, b, e) for eps, b, e in zip(EXPLAINED_VARIANCE_GRID, options, errors)]
    return costs


def brute_force(costs, budget_bytes):
    """The least summed error of every combination within the budget (None if none fits)."""
    best = None
    for combo in itertools.product(*costs.values()):
        if sum(c.kept_bytes for c in combo) <= budget_bytes:
            error = sum(c.error for c in combo)
            best = error if best is None else min(best, error)
    return best


def chosen(costs, choice):
    return [next(c for c in costs[p] if c.explained_variance == eps) for p, eps in choice.items()]


@pytest.mark.parametrize('seed', range(12))
def test_knapsack_is_the_brute_force_optimum_at_byte_resolution(seed):
    costs = random_costs(seed, max_bytes=600)  # budgets < BUDGET_UNITS bytes: one byte per unit, exact
    low = sum(min(c.kept_bytes for c in o) for o in costs.values())
    high = sum(max(c.kept_bytes for c in o) for o in costs.values())
    for budget in sorted({low, (low + high) // 2, high, random.Random(seed).randint(low, high)}):
        choice = choose_explained_variance(costs, budget)
        assert list(choice) == list(costs)
        picked = chosen(costs, choice)
        assert sum(c.kept_bytes for c in picked) <= budget
        assert sum(c.error for c in picked) == pytest.approx(brute_force(costs, budget))


@pytest.mark.parametrize('seed', range(6))
def test_knapsack_with_coarse_units_never_exceeds_and_loses_at_most_the_rounding(seed):
    costs = random_costs(seed, max_bytes=50 * MIB)
    low = sum(min(c.kept_bytes for c in o) for o in costs.values())
    high = sum(max(c.kept_bytes for c in o) for o in costs.values())
    budget = random.Random(seed).randint(low, high)
    picked = chosen(costs, choose_explained_variance(costs, budget))
    assert sum(c.kept_bytes for c in picked) <= budget
    error = sum(c.error for c in picked)
    assert error >= brute_force(costs, budget) - 1e-9
    # rounding each layer up costs at most one unit per layer: never worse than the optimum with that slack
    slack = len(costs) * math.ceil(budget / BUDGET_UNITS)
    slackened = brute_force(costs, budget - slack)
    assert slackened is None or error <= slackened + 1e-9


def test_infeasible_budget_names_budget_minimum_and_what_to_do():
    costs = {'a': [(0.5, 3 * MIB, 1.0), (0.9, 5 * MIB, 0.1)], 'b': [(0.5, MIB // 2, 2.0), (0.9, MIB, 0.0)]}
    assert choose_explained_variance(costs, int(3.5 * MIB)) == {'a': 0.5, 'b': 0.5}
    with pytest.raises(BudgetInfeasibleError) as info:
        choose_explained_variance(costs, 2 * MIB)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert 'memory_budget_mib=2 cannot be met' in message
    assert 'at least 3.500 MiB' in message and 'raise memory_budget_mib to at least 3.500' in message
    assert 'fine-tune fewer layers' in message


# ---------------------------------------------------------------------------------- one layer's costs
CONVS = [
    (HOSVDConv2d, dict(kernel_size=3, padding=1)),
    (HOSVDConv2d, dict(kernel_size=3, stride=2, padding=2, dilation=2)),
    (HOSVDConv2d, dict(kernel_size=3, padding=1, groups=2)),
    (SVDConv2d, dict(kernel_size=1)),
    (HOSVDConv2d, dict(kernel_size=3, padding=1, padding_mode='reflect')),  # padded explicitly
    (SVDConv2d, dict(kernel_size=(2, 3), padding='same')),  # asymmetric 'same': padded explicitly
]


def layer_weight_gradient(conv, x, grad_output):
    """The weight gradient the layer's own forward and backward give (compressing, at its eps)."""
    conv.weight.grad = None
    conv.train()
    conv(x.clone().requires_grad_(True)).backward(grad_output)
    return conv.weight.grad.clone()


@pytest.mark.parametrize('layer, kwargs', CONVS)
def test_costs_are_what_the_layer_keeps_and_its_gradient_error(layer, kwargs):
    torch.manual_seed(0)
    conv = layer(8, 6, explained_variance=0.8, **kwargs)
    x = low_rank_activation((6, 8, 12, 12), seed=1)
    with torch.no_grad():
        grad_output = torch.randn(conv(x).shape, generator=torch.Generator().manual_seed(2))
    # nn.Conv2d's own forward (its padding modes) and autograd: independent of the budget's arithmetic
    exact, = torch.autograd.grad(nn.Conv2d.forward(conv, x), conv.weight, grad_output)
    grid = (0.5, 0.8, 0.95, 1.0)
    costs = explained_variance_costs(conv, x, grad_output, grid)
    assert [c.explained_variance for c in costs] == list(grid)
    for cost in costs:
        conv.explained_variance = cost.explained_variance
        approx = layer_weight_gradient(conv, x, grad_output)
        assert cost.kept_bytes == conv.last_kept_bytes
        assert cost.error == pytest.approx(float((approx - exact).norm()), rel=1e-3, abs=1e-4 * float(exact.norm()))
    assert costs[-1].error <= 1e-4 * float(exact.norm())  # eps = 1: exact
    assert costs[0].kept_bytes <= costs[-1].kept_bytes and costs[0].error >= costs[-1].error


# --------------------------------------------------------------------------------- the region's budget
SAMPLE = osp.join(REPO, 'configs', 'sample', 'deeplabv3_r18-d8_1xb2-20it_vocsample-128x128.py')


@pytest.fixture(scope='module')
def deeplab():
    _, model = build_model_from_config(SAMPLE)
    return model


def image_batches(count=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(2, 3, 64, 64, generator=g) for _ in range(count)]


def fitted_region(deeplab, budget_mib=1.0, **kwargs):
    model = copy.deepcopy(deeplab)
    region = FineTuneRegion(method='hosvd', num_layers=3, memory_budget_mib=budget_mib, **kwargs)
    region.apply(model)
    return model, region


def run_tensor_loss(model):
    def run_batch(batch):
        model(batch, mode='tensor').square().mean().backward()
    return run_batch


def kept_bytes_of_a_step(model, region, batch):
    model.train()
    region.set_norms_eval()
    run_tensor_loss(model)(batch)
    model.zero_grad(set_to_none=True)
    return sum(conv.last_kept_bytes for conv in region.fine_tuned.values())


def test_fit_budget_chooses_from_the_grid_leaves_the_model_and_fits_the_budget(deeplab):
    model, region = fitted_region(deeplab)
    batches = image_batches()
    costs = region.budget_costs(model, run_tensor_loss(model), batches)
    low = sum(min(c.kept_bytes for c in o) for o in costs.values())
    high = sum(max(c.kept_bytes for c in o) for o in costs.values())
    assert sorted(costs) == sorted(region.layer_paths) and low < high
    region.memory_budget_mib = (low + high) / 2 / MIB  # a budget that forces a real choice

    model.eval()
    model.backbone.stem[0].weight.requires_grad_(True)  # a grad already there stays as it is
    existing = torch.ones_like(model.decode_head.conv_seg.weight)
    model.decode_head.conv_seg.weight.grad = existing
    before = {k: v.clone() for k, v in model.state_dict().items()}
    choice = region.fit_budget(model, run_tensor_loss(model), batches)

    after = model.state_dict()
    assert list(before) == list(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert model.decode_head.conv_seg.weight.grad is existing
    assert all(p.grad is None for n, p in model.named_parameters() if n != 'decode_head.conv_seg.weight')
    assert not any(m.training for m in model.modules())  # modes restored
    assert not any(conv.runs_plain for conv in region.fine_tuned.values())
    model.backbone.stem[0].weight.requires_grad_(False)
    model.decode_head.conv_seg.weight.grad = None

    assert sorted(choice) == sorted(region.layer_paths) and set(choice.values()) <= set(EXPLAINED_VARIANCE_GRID)
    assert len(set(choice.values())) > 1 or min(choice.values()) > 0.5  # not simply the cheapest everywhere
    assert region.budget_choice == choice
    assert all(region.fine_tuned[p].explained_variance == eps for p, eps in choice.items())
    for path, eps in choice.items():
        assert f'{path}  ' in region.budget_table
    assert f'(budget {region.memory_budget_mib:g} MiB)' in region.budget_table
    for batch in batches:  # measured on the calibration batches: within the budget
        assert kept_bytes_of_a_step(model, region, batch) <= region.memory_budget_mib * MIB
    summary = region.summary(model)
    assert 'explained_variance' in summary.splitlines()[1]
    row = next(line for line in summary.splitlines() if ' decode_head.conv_seg ' in line)
    assert row.rstrip().endswith(f"{choice['decode_head.conv_seg']:g}")


def test_an_infeasible_region_budget_says_the_minimum(deeplab):
    model, region = fitted_region(deeplab, budget_mib=1e-4)
    with pytest.raises(BudgetInfeasibleError, match=r'raise memory_budget_mib to at least \d+\.\d{3} or '
                                                    r'fine-tune fewer layers'):
        region.fit_budget(model, run_tensor_loss(model), image_batches(2))
    assert region.budget_choice == {}
    with pytest.raises(ValueError, match='budget_batches=2: the calibration batches ran out after 1'):
        region.fit_budget(model, run_tensor_loss(model), image_batches(1))


def test_calibration_feeds_no_frozen_subspace_estimate(deeplab):
    model, region = fitted_region(deeplab, budget_mib=100.0, subspace='frozen', subspace_batches=1)
    region.fit_budget(model, run_tensor_loss(model), image_batches())
    assert region.subspace_states() == {}
    assert all(conv.last_kept_bytes is None for conv in region.fine_tuned.values())
    assert set(region.budget_choice.values()) == {0.95}  # a generous budget: the least error everywhere


def test_a_loaded_choice_sets_the_layers_and_unknown_paths_are_refused(deeplab):
    model, region = fitted_region(deeplab)
    region.load_budget_choice({'decode_head.conv_seg': 0.6})
    assert model.decode_head.conv_seg.explained_variance == 0.6 and region.budget_choice == {
        'decode_head.conv_seg': 0.6}
    with pytest.raises(ValueError, match=r"not fine-tuned here: \['backbone.stem.0'\]"):
        region.load_budget_choice({'backbone.stem.0': 0.5})


@pytest.mark.parametrize('kwargs, message', [
    (dict(memory_budget_mib=-1), 'memory_budget_mib=-1 must be a number of MiB > 0, or None for no budget'),
    (dict(memory_budget_mib=0), 'memory_budget_mib=0 must be a number of MiB > 0'),
    (dict(memory_budget_mib='10'), "memory_budget_mib='10' must be a number of MiB > 0"),
    (dict(memory_budget_mib=float('nan')), 'memory_budget_mib=nan must be'),
    (dict(memory_budget_mib=True), 'memory_budget_mib=True must be'),
    (dict(memory_budget_mib=10, method='none'), "memory_budget_mib=10 chooses explained_variance per layer: it "
                                                "needs method='svd' or 'hosvd', not 'none'"),
    (dict(memory_budget_mib=10, budget_batches=0), 'budget_batches=0 must be an integer >= 1'),
    (dict(budget_batches=1.5), 'budget_batches=1.5 must be an integer >= 1'),
])
def test_bad_budget_values_are_named(kwargs, message):
    with pytest.raises(ValueError) as info:
        FineTuneRegion(num_layers=2, **{'method': 'hosvd', **kwargs})
    assert message in str(info.value)
