"""Choosing and swapping convolutions and linear layers (mmseg_actcomp.ops.convert) and FineTuneRegion on a
small transformer-like module: trace order, paths, errors, the region's lean ops, freezing, one training
step, the summary, the memory tool's per-layer table, the memory budget and the subspaces."""
import copy

import pytest
import torch
from torch import nn

from mmseg_actcomp.ops import HOSVDConv2d, HOSVDLinear, LeanGELU, RegeneratedDropout, SVDLinear
from mmseg_actcomp.ops.convert import check_layer_path, swap_layers, trace_layer_order
from mmseg_actcomp.ops.region import FineTuneRegion

pytestmark = pytest.mark.usefixtures('single_thread')


class Block(nn.Module):
    """A pre-norm transformer MLP block: ``x + Linear(Dropout(GELU(Linear(LayerNorm(x)))))`` on ``(B, N, C)``."""

    def __init__(self, dim=16, hidden=32, p=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(p), nn.Linear(hidden, dim))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class TinyTransformer(nn.Module):
    """Patch embedding (a strided conv) -> ``(B, N, C)`` tokens -> two blocks -> LayerNorm -> a linear
    classifier per token. The classifier is registered first and runs last."""

    def __init__(self, dim=16, classes=5, p=0.0):
        super().__init__()
        self.head = nn.Linear(dim, classes)
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.blocks = nn.Sequential(Block(dim, p=p), Block(dim, p=p))
        self.norm = nn.LayerNorm(dim)

    def forward(self, image):
        tokens = self.embed(image).flatten(2).mT  # (B, N, C)
        return self.head(self.norm(self.blocks(tokens)))


ORDER = ['embed', 'blocks.0.mlp.0', 'blocks.0.mlp.3', 'blocks.1.mlp.0', 'blocks.1.mlp.3', 'head']


def tiny(p=0.0, seed=0):
    torch.manual_seed(seed)
    return TinyTransformer(p=p)


def images(batch=3, seed=1):
    return torch.rand(batch, 3, 14, 10, generator=torch.Generator().manual_seed(seed))  # 7 x 5 = 35 tokens


def example_forward(model):
    return lambda: model(torch.zeros(1, 3, 14, 10))


def test_trace_counts_linear_layers_in_forward_order_and_skips_what_is_never_called():
    model = tiny()
    assert trace_layer_order(model, example_forward(model)) == ORDER

    class Attention(nn.Module):  # nn.MultiheadAttention reads out_proj's weight, never calls out_proj
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.proj = nn.Linear(16, 16)

        def forward(self, x):
            return self.proj(self.attn(x, x, x)[0])
    attention = Attention()
    assert trace_layer_order(attention, lambda: attention(torch.zeros(1, 4, 16))) == ['proj']
    with pytest.raises(ValueError, match=r"layers: 'attn.out_proj' is the out_proj of an nn.MultiheadAttention, "
                                         r'which reads its weight directly and never calls it: make its '
                                         r'projections layers first \(expose_attention_projections'):
        check_layer_path(attention, 'attn.out_proj')
    region = FineTuneRegion(layers=['attn.out_proj'])  # which does
    assert region.apply(attention) == ['attn.out_proj'] and attention.attn.out_proj.weight.requires_grad


def test_paths_that_are_not_convs_or_linear_layers_are_named():
    model = tiny()
    assert check_layer_path(model, 'head') is model.head
    with pytest.raises(ValueError, match=r"layers: 'blocks.0.mlp' is a Sequential, not one of the convolutions, "
                                         r"linear layers and attention projections \(nn.Conv2d, nn.Linear, "
                                         r"AttentionProjection\); the layers inside it are "
                                         r"\['blocks.0.mlp.0', 'blocks.0.mlp.3'\]"):
        check_layer_path(model, 'blocks.0.mlp')
    with pytest.raises(ValueError, match=r"'blocks.0.norm' is a LayerNorm, not one of the convolutions, linear"):
        check_layer_path(model, 'blocks.0.norm')
    with pytest.raises(ValueError, match=r"'blocks.2' is not a module of TinyTransformer"):
        check_layer_path(model, 'blocks.2')
    with pytest.raises(ValueError, match=r'num_layers=7 but the model runs 6 convolutions, linear layers and '
                                         r'attention projections'):
        FineTuneRegion(num_layers=7).apply(model, example_forward(model))


def test_a_compressed_twin_shares_the_layers_parameters_and_bad_kinds_are_named():
    from mmseg_actcomp.ops.convert import compressed_twin
    linear = nn.Linear(4, 3)
    twin = compressed_twin(linear, 'svd', explained_variance=0.7, center=False)
    assert type(twin) is SVDLinear and twin.weight is linear.weight and twin.explained_variance == 0.7
    assert type(compressed_twin(nn.Conv2d(2, 2, 1), 'hosvd')) is HOSVDConv2d
    with pytest.raises(ValueError, match=r"method='gradfilt' has no layer type for Linear; the methods per kind: "
                                         r"\{'Conv2d': \['gradfilt', 'hosvd', 'svd'\], 'Linear': \['hosvd', 'svd'\]"):
        compressed_twin(linear, 'gradfilt')
    with pytest.raises(TypeError, match='LayerNorm is none of the convolutions, linear layers'):
        compressed_twin(nn.LayerNorm(4), 'hosvd')


def test_gradient_filter_on_a_linear_layer_is_a_clear_error():
    """Gradient Filter's patches are spatial: a linear layer chosen for it raises naming the layer, whether
    named or counted by num_layers; its convolutions still take it."""
    model = tiny()
    message = (r"'blocks.1.mlp.3' is an nn.Linear: method='gradfilt' \(Gradient Filter\) is for convolutions "
               r"only, its patches being spatial; give layers=\[...\] that are convolutions, or use one of "
               r"\['hosvd', 'none', 'svd'\]")
    with pytest.raises(ValueError, match=message):
        FineTuneRegion(method='gradfilt', num_layers=2).apply(model, example_forward(model))
    with pytest.raises(ValueError, match=message):
        FineTuneRegion(method='gradfilt', layers=['blocks.1.mlp.3']).apply(model)
    with pytest.raises(ValueError, match=message):
        swap_layers(model, ['blocks.1.mlp.3'], 'gradfilt', 0.8)
    assert all(type(m) in (nn.Linear, nn.Conv2d) for m in (model.get_submodule(p) for p in ORDER))  # untouched
    from mmseg_actcomp.ops import GradFilterConv2d
    FineTuneRegion(method='gradfilt', layers=['embed']).apply(model)
    assert type(model.embed) is GradFilterConv2d


def test_num_layers_chooses_linear_layers_and_one_training_step_fine_tunes_them():
    stock = tiny(p=0.1)
    model = copy.deepcopy(stock)
    region = FineTuneRegion(num_layers=3)
    paths = region.apply(model, example_forward(model))
    assert paths == ORDER[-3:] == region.layer_paths
    layers = [model.get_submodule(p) for p in paths]
    assert all(type(m) is HOSVDLinear and m.layer_name == p and not m.truncate_batch and m.explained_variance == 0.9
               for p, m in zip(paths, layers))
    # the region: 'blocks.1.mlp' made lean (its dropout and GELU); the LayerNorms, outside it, left as they are
    assert type(model.blocks[1].mlp[2]) is RegeneratedDropout and type(model.blocks[0].mlp[2]) is nn.Dropout
    assert type(model.blocks[1].mlp[1]) is LeanGELU and model.blocks[1].mlp[1].derivative_bits == 4
    assert type(model.blocks[0].mlp[1]) is nn.GELU and type(model.blocks[1].norm) is nn.LayerNorm
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        'blocks.1.mlp.0.weight', 'blocks.1.mlp.0.bias', 'blocks.1.mlp.3.weight', 'blocks.1.mlp.3.bias',
        'head.weight', 'head.bias'}
    assert list(model.state_dict()) == list(stock.state_dict())
    stock.eval(), model.eval()
    x = images()
    assert torch.equal(model(x), stock(x))  # the same network
    # one training step
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {p: model.get_submodule(p).weight.detach().clone() for p in paths}
    model(x).square().mean().backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in layers)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    optimizer.step()
    assert all(not torch.equal(before[p], model.get_submodule(p).weight) for p in paths)
    stats = region.stats()
    assert set(stats) >= {'rank_mode1', 'rank_mode2', 'rank_mode3', 'kept_ratio', 'kept_energy'}
    assert 'rank_mode4' not in stats and 0 < stats['kept_ratio'] < 1
    assert stats['rank_mode1'] == 3  # the batch mode kept whole (the region's default)
    # a stock model loads the fine-tuned state dict, and back
    stock.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(stock.head.weight, model.head.weight)
    model.load_state_dict(tiny(seed=5).state_dict(), strict=True)
    # the start-up summary lists them with their type and weight shape
    summary = region.summary(model)
    for path, shape in zip(paths, ('32x16', '16x32', '5x16')):
        row = next(line for line in summary.splitlines() if f' {path} ' in line)
        assert 'HOSVDLinear' in row and shape in row and row.rstrip().endswith('0.9'), row
    assert region.apply(model, example_forward(model)) == paths  # idempotent
    assert [model.get_submodule(p) for p in paths] == layers


def test_linear_layers_at_eps_one_fine_tune_exactly():
    """At eps 1 with its batch mode truncated too, and the region's GELUs keeping their inputs whole, the
    chosen linear layers' and convolution's gradients are the stock model's: the whole chain of choosing,
    swapping, lean region and freezing changes nothing."""
    stock, model = tiny(), tiny()
    region = FineTuneRegion(num_layers=6, explained_variance=1.0, truncate_batch=True, norm_input_bits=None,
                            gelu_bits=None)
    paths = region.apply(model, example_forward(model))
    assert paths == ORDER and type(model.embed) is HOSVDConv2d
    assert [type(model.get_submodule(p)) for p in ORDER[1:]] == [HOSVDLinear] * 5
    stock.train(), model.train()
    x = images()
    stock(x).square().mean().backward()
    model(x).square().mean().backward()
    for path in ORDER:
        torch.testing.assert_close(model.get_submodule(path).weight.grad, stock.get_submodule(path).weight.grad,
                                   rtol=1e-4, atol=1e-6)
    stats = region.stats()  # mode 4: the conv's W alone (the linear layers' inputs have 3 modes)
    assert stats['rank_mode4'] == model.embed.last_ranks[3] == 10


def test_method_svd_and_none_on_linear_layers():
    model = tiny()
    FineTuneRegion(method='svd', layers=['head', 'blocks.0.mlp.0']).apply(model)
    assert type(model.head) is SVDLinear and type(model.blocks[0].mlp[0]) is SVDLinear
    model = tiny()
    region = FineTuneRegion(method='none', num_layers=2)
    region.apply(model, example_forward(model))
    assert type(model.head) is nn.Linear and model.head.weight.requires_grad
    assert not model.blocks[0].mlp[0].weight.requires_grad


def test_swapping_again_updates_in_place_and_a_new_truncate_batch_makes_a_twin():
    model = tiny()
    swapped = swap_layers(model, ['head'], 'hosvd', 0.8)
    head = swapped['head']
    assert swap_layers(model, ['head'], 'hosvd', 0.6, center=False)['head'] is head
    assert head.explained_variance == 0.6 and head.center is False
    twin = swap_layers(model, ['head'], 'hosvd', 0.6, truncate_batch=False)['head']
    assert twin is not head and twin.weight is head.weight and not twin.truncate_batch


def test_the_memory_tool_lists_linear_layers():
    from mmseg_actcomp.memory import measure_step
    from mmseg_actcomp.memory.report import build_report, format_summary
    model = tiny()
    region = FineTuneRegion(num_layers=3, explained_variance=0.8)
    paths = region.apply(model, example_forward(model))
    model.train()
    x = images()
    step = measure_step(model, lambda: model(x).square().mean(), paths)
    for path in paths:
        layer, row = model.get_submodule(path), step.layers[path]
        assert row.type == 'HOSVDLinear' and row.kept_bytes == layer.last_kept_bytes < row.vanilla_bytes
        assert row.input_shape == (3, 35, layer.in_features) and len(row.ranks) == 3
    assert 'CompressedLinearFunctionBackward' in step.saved['per_op']['region']
    table = format_summary(build_report([step], paths, {}))
    for path in paths:
        assert any(line.startswith(path) and 'HOSVDLinear' in line for line in table.splitlines()), table


def test_a_memory_budget_chooses_each_linear_layers_threshold():
    from mmseg_actcomp.ops.budget import MIB
    model = tiny()
    region = FineTuneRegion(num_layers=3, memory_budget_mib=1.0)
    paths = region.apply(model, example_forward(model))
    batches = [images(seed=s) for s in range(2)]

    def run_batch(batch):
        model(batch).square().mean().backward()
    costs = region.budget_costs(model, run_batch, batches)
    assert sorted(costs) == sorted(paths)
    low = sum(min(c.kept_bytes for c in options) for options in costs.values())
    high = sum(max(c.kept_bytes for c in options) for options in costs.values())
    assert low < high
    region.memory_budget_mib = (low + high) / 2 / MIB
    choice = region.choose_budget(costs)
    assert sorted(choice) == sorted(paths) and all(model.get_submodule(p).explained_variance == choice[p]
                                                   for p in paths)
    model.train()
    run_batch(batches[0])
    assert sum(model.get_submodule(p).last_kept_bytes for p in paths) <= region.memory_budget_mib * MIB


@pytest.mark.parametrize('subspace', ['warm', 'frozen'])
def test_subspaces_of_linear_layers_go_into_the_region_state(subspace):
    model = tiny()
    region = FineTuneRegion(num_layers=2, subspace=subspace, subspace_batches=1)
    paths = region.apply(model, example_forward(model))
    model.train()
    model(images()).sum().backward()
    states = region.subspace_states()
    assert sorted(states) == sorted(paths)
    for state in states.values():
        assert sorted(state['bases']) == [1, 2]  # tokens and channels, not the batch
    fresh = tiny()
    again = FineTuneRegion(num_layers=2, subspace=subspace, subspace_batches=1)
    again.apply(fresh, example_forward(fresh))
    again.load_subspace_states(states)
    assert sorted(again.subspace_states()) == sorted(paths)
