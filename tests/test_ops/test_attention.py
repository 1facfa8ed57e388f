"""Tests of mmseg_actcomp.ops.attention: LeanMultiheadAttention computes what nn.MultiheadAttention computes
(outputs, weights, gradients; float64 gradcheck) with the same Parameters and state-dict keys, keeps no more
for backward, and its projections are layers that the region traces, chooses (query, key and value
together), swaps, freezes, lists and fine-tunes; on a small block and on SegFormer MiT-B0."""
import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mmseg_actcomp.memory import measure_step
from mmseg_actcomp.ops import HOSVDLinear
from mmseg_actcomp.ops.attention import (AttentionProjection, HOSVDProjection, LeanMultiheadAttention, SVDProjection,
                                         expose_attention_projections)
from mmseg_actcomp.ops.convert import swap_layers, trace_layer_order
from mmseg_actcomp.ops.region import FineTuneRegion
from .test_convert import example_forward, images  # the same 14x10 images: 7 x 5 = 35 tokens

pytestmark = pytest.mark.usefixtures('single_thread')

EMBED, HEADS, BATCH, QUERIES, KEYS = 12, 3, 2, 7, 13

#: nn.MultiheadAttention settings, and whether the key and value differ from the query
MODULES = {
    'self-batch-first': (dict(batch_first=True), False),
    'cross': (dict(), True),
    'no-bias': (dict(bias=False, batch_first=True), True),
    'bias-kv-zero-attn': (dict(add_bias_kv=True, add_zero_attn=True), True),
    'kdim-vdim': (dict(kdim=5, vdim=6, batch_first=True), True),
    'dropout': (dict(dropout=0.3, batch_first=True), False),
}


def masks(kind, tgt_len, src_len, dtype=torch.float64):
    """``(key_padding_mask, attn_mask)`` of one kind: the last keys of sample 0 padded; a causal-like
    pattern per query (never a whole row masked); float masks as large negative or random additive terms."""
    g = torch.Generator().manual_seed(5)
    padding = torch.zeros(BATCH, src_len, dtype=torch.bool)
    padding[0, -3:] = True
    pattern = torch.rand(tgt_len, src_len, generator=g) < 0.3
    pattern[:, 0] = False
    if kind == 'none':
        return None, None
    if kind == 'padding-bool':
        return padding, None
    if kind == 'padding-float':
        return padding.to(dtype) * -1e4, None
    if kind == 'both-bool':
        return padding, pattern
    if kind == 'attn-float-3d':
        return None, torch.randn(BATCH * HEADS, tgt_len, src_len, generator=g, dtype=dtype)
    raise ValueError(kind)


def pair(seed=0, dtype=torch.float64, **kwargs):
    """A stock nn.MultiheadAttention (non-zero biases) and its LeanMultiheadAttention twin."""
    torch.manual_seed(seed)
    stock = nn.MultiheadAttention(EMBED, HEADS, dtype=dtype, **kwargs)
    with torch.no_grad():
        for name, p in stock.named_parameters():
            if 'bias' in name:
                p.normal_()
    return stock, LeanMultiheadAttention.from_module(stock)


def inputs(module, cross, dtype=torch.float64, seed=1, batched=True):
    """query, key, value laid out as ``module`` takes them; the same tensor three times for self-attention."""
    g = torch.Generator().manual_seed(seed)

    def make(tokens, dim):
        shape = (tokens, dim) if not batched else (BATCH, tokens, dim) if module.batch_first else (tokens, BATCH, dim)
        return torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
    query = make(QUERIES, EMBED)
    if not cross:
        return query, query, query
    return query, make(KEYS, module.kdim), make(KEYS, module.vdim)


def run(module, args, grad_seed=2, **kwargs):
    """Output, weights and the gradients of (query, key, value, every Parameter) of ``<output, g> +
    <weights, g'>``, with dropout drawn from seed 3."""
    torch.manual_seed(3)
    output, weights = module(*args, **kwargs)
    g = torch.Generator().manual_seed(grad_seed)
    loss = (output * torch.randn(output.shape, generator=g, dtype=output.dtype)).sum()
    if weights is not None:
        loss = loss + (weights * torch.randn(weights.shape, generator=g, dtype=weights.dtype)).sum()
    leaves = list(dict.fromkeys(args)) + list(module.parameters())
    return output, weights, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize('outputs', ['weights-averaged', 'weights-per-head', 'no-weights'])
@pytest.mark.parametrize('mask', ['none', 'padding-bool', 'padding-float', 'both-bool', 'attn-float-3d'])
@pytest.mark.parametrize('module', MODULES.values(), ids=MODULES.keys())
def test_outputs_and_gradients_equal_stock(module, mask, outputs):
    kwargs, cross = module
    stock, lean = pair(**kwargs)
    args = inputs(stock, cross)
    key_padding_mask, attn_mask = masks(mask, QUERIES, KEYS if cross else QUERIES)
    options = dict(key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=outputs != 'no-weights',
                   average_attn_weights=outputs == 'weights-averaged')
    expected, actual = run(stock, args, **options), run(lean, args, **options)
    torch.testing.assert_close(actual[0], expected[0])
    assert actual[0].is_contiguous() or lean.batch_first  # laid out as stock's: (L, B, E) contiguous
    if outputs == 'no-weights':
        assert actual[1] is None and expected[1] is None
    else:
        assert actual[1].shape == expected[1].shape
        torch.testing.assert_close(actual[1], expected[1])
    assert len(actual[2]) == len(expected[2])
    for a, e in zip(actual[2], expected[2]):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize('batch_first', [True, False])
def test_unbatched_and_causal_equal_stock(batch_first):
    """Unbatched inputs (batch_first ignored) and is_causal, with and without weights."""
    stock, lean = pair(batch_first=batch_first)
    args = inputs(stock, cross=True, batched=False)
    for options in (dict(), dict(average_attn_weights=False), dict(need_weights=False)):
        expected, actual = run(stock, args, **options), run(lean, args, **options)
        for a, e in zip(actual[:2] + actual[2], expected[:2] + expected[2]):
            torch.testing.assert_close(a, e)
    causal = torch.ones(QUERIES, QUERIES, dtype=torch.bool).triu(1)
    query = inputs(stock, cross=False)[0]
    for need_weights in (True, False):
        options = dict(attn_mask=causal, is_causal=True, need_weights=need_weights)
        expected, actual = run(stock, (query,) * 3, **options), run(lean, (query,) * 3, **options)
        for a, e in zip(actual[:1] + actual[2], expected[:1] + expected[2]):
            torch.testing.assert_close(a, e)


def test_inference_equals_stocks_fused_path():
    """Without grad in eval mode stock runs batch_first self-attention with even heads fused
    (torch._native_multi_head_attention); the unfused path here gives the same within float32 rounding."""
    torch.manual_seed(0)
    stock = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    lean = LeanMultiheadAttention.from_module(stock)
    x = torch.randn(BATCH, QUERIES, 16)
    padding = masks('padding-bool', QUERIES, QUERIES)[0]
    with torch.no_grad():
        torch.testing.assert_close(lean(x, x, x, key_padding_mask=padding)[0],
                                   stock(x, x, x, key_padding_mask=padding)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('need_weights', [True, False])
@pytest.mark.parametrize('kwargs', [dict(batch_first=True, add_bias_kv=True), dict(kdim=5, vdim=6)],
                         ids=['bias-kv', 'kdim-vdim'])
def test_gradcheck_float64(kwargs, need_weights):
    """Inputs and every Parameter, 7 queries and 13 keys, the last keys of one sample padded."""
    torch.manual_seed(0)
    lean = LeanMultiheadAttention(6, 2, dtype=torch.float64, **kwargs)
    query, key, value = inputs(lean, cross=True)
    query, key, value = query[..., :6].detach(), key.detach(), value.detach()
    if 'kdim' not in kwargs:
        key, value = key[..., :6], value[..., :6]
    names = [n for n, _ in lean.named_parameters()]
    padding = masks('padding-bool', QUERIES, KEYS)[0]

    def attention(query, key, value, *params):
        output, weights = functional_call(lean, dict(zip(names, params)), (query, key, value),
                                          dict(key_padding_mask=padding, need_weights=need_weights))
        return output if weights is None else (output, weights)
    leaves = [t.clone().requires_grad_() for t in [query, key, value] + list(lean.parameters())]
    assert torch.autograd.gradcheck(attention, leaves)


# --- the same module: Parameters, keys, conversion ------------------------------------------------------


def test_from_module_shares_parameters_keys_and_out_proj():
    for kwargs in (dict(), dict(kdim=5, vdim=6, add_bias_kv=True), dict(bias=False)):
        stock, lean = pair(**kwargs)
        assert list(lean.state_dict()) == list(stock.state_dict())
        assert [(n, id(p)) for n, p in lean.named_parameters()] == [(n, id(p)) for n, p in stock.named_parameters()]
        assert lean.out_proj is stock.out_proj
        assert all(not list(m.parameters(recurse=False)) for m in (lean.q_proj, lean.k_proj, lean.v_proj))
        fresh = nn.MultiheadAttention(EMBED, HEADS, dtype=torch.float64, **kwargs)
        fresh.load_state_dict(lean.state_dict(), strict=True)
        lean.load_state_dict(pair(seed=7, **kwargs)[0].state_dict(), strict=True)
    with pytest.raises(TypeError, match='from_module expects an nn.MultiheadAttention, got LeanMultiheadAttention'):
        LeanMultiheadAttention.from_module(lean)


def test_projections_are_rows_of_the_attention_parameters():
    stock, lean = pair()
    for i, projection in enumerate((lean.q_proj, lean.k_proj, lean.v_proj)):
        rows = slice(i * EMBED, (i + 1) * EMBED)
        assert torch.equal(projection.weight, stock.in_proj_weight[rows])
        assert projection.weight.untyped_storage().data_ptr() == stock.in_proj_weight.untyped_storage().data_ptr()
        assert torch.equal(projection.bias, stock.in_proj_bias[rows])
        assert projection.source_parameters() == [stock.in_proj_weight, stock.in_proj_bias]
    _, separate = pair(kdim=5, vdim=6)
    assert separate.k_proj.weight is separate.k_proj_weight and separate.k_proj.in_features == 5
    assert separate.v_proj.source_parameters() == [separate.v_proj_weight, separate.in_proj_bias]
    assert 'weight=in_proj_weight[12:24]' in repr(lean.k_proj) and 'weight=v_proj_weight,' in repr(separate.v_proj)
    with pytest.raises(ValueError, match=r"role='o' is not one of \['q', 'k', 'v'\]"):
        AttentionProjection(lean, 'o')


def test_weight_initialisations_looking_for_linear_layers_leave_in_proj_weight_alone():
    """MiT's init_weights (run by mmengine after the hook's surgery) re-initialises every nn.Linear: the
    projections are none, so in_proj_weight keeps its initialisation as in a stock model."""
    from mmengine.model.weight_init import trunc_normal_init
    stock, lean = pair()
    model = nn.ModuleDict(dict(attn=lean))
    before = stock.in_proj_weight.detach().clone()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_init(m, std=.02, bias=0.)
    assert torch.equal(stock.in_proj_weight, before) and stock.out_proj.weight.std() < 0.05


def test_expose_replaces_every_stock_attention_once_and_is_idempotent():
    class Subclass(nn.MultiheadAttention):
        pass
    shared = nn.MultiheadAttention(8, 2)
    model = nn.ModuleDict(dict(a=shared, b=nn.Sequential(shared), c=Subclass(8, 2)))
    keys, params = list(model.state_dict()), list(model.parameters())
    lean = expose_attention_projections(model)
    assert sorted(lean) == ['a', 'b.0'] and lean['a'] is lean['b.0'] is model.a is model.b[0]
    assert type(model.c) is Subclass
    assert list(model.state_dict()) == keys and all(a is b for a, b in zip(model.parameters(), params))
    assert expose_attention_projections(model) == lean
    with pytest.raises(ValueError, match='the model is an nn.MultiheadAttention itself; use '
                                         r'LeanMultiheadAttention.from_module\(model\)'):
        expose_attention_projections(shared)


def test_a_deep_copy_reads_its_own_parameters():
    """EMA and the tests deep-copy models: the copy's projections read the copy's Parameters."""
    _, lean = pair()
    model = copy.deepcopy(nn.Sequential(lean))
    assert model[0].q_proj.attention is model[0]
    with torch.no_grad():
        model[0].in_proj_weight.zero_()
    assert not model[0].k_proj.weight.any() and lean.k_proj.weight.any()


# --- what attention keeps -------------------------------------------------------------------------------


def attention_region(attention, query, key, value, need_weights=True):
    """Saved bytes of one training forward of ``attention`` inside a container, the projections frozen
    unless ``attention``'s own flags say otherwise: the region (the attention) and its bytes per op."""
    model = nn.ModuleDict(dict(attn=attention)).train()

    def loss():
        return attention(query, key, value, need_weights=need_weights)[0].sum()
    step = measure_step(model, loss, ['attn.out_proj'])
    return step.saved['region'], {op: row['bytes'] for op, row in step.saved['per_op']['region'].items()}


@pytest.mark.parametrize('call', ['self', 'shared-key-value', 'distinct'])
def test_attention_keeps_no_more_than_stock(call):
    """Frozen projections: what attention itself keeps. Stock's self-attention (one query tensor) packs
    q, k, v into one (3, L, B, E) tensor whose key and value views keep all of it alive; here the scaled query,
    the key and the value are kept apart: ``L B E`` less. Cross-attention keeps exactly the same. With the
    projections trainable, never more either."""
    stock, lean = pair(dtype=torch.float32, batch_first=True)
    g = torch.Generator().manual_seed(0)
    query = torch.randn(BATCH, QUERIES, EMBED, generator=g, requires_grad=True)
    other = torch.randn(BATCH, KEYS, EMBED, generator=g, requires_grad=True)
    value = torch.randn(BATCH, KEYS, EMBED, generator=g, requires_grad=True)
    key, value = {'self': (query, query), 'shared-key-value': (other, other), 'distinct': (other, value)}[call]
    keys = key.shape[1]
    softmax = BATCH * HEADS * QUERIES * keys * 4
    query_bytes, key_bytes = BATCH * QUERIES * EMBED * 4, BATCH * keys * EMBED * 4
    for p in stock.parameters():
        p.requires_grad_(False)
    ours, ours_per_op = attention_region(lean, query, key, value)
    theirs, theirs_per_op = attention_region(stock, query, key, value)
    assert ours == softmax + query_bytes + 2 * key_bytes  # softmax output, scaled query, key, value
    assert ours_per_op['SoftmaxBackward0'] == theirs_per_op['SoftmaxBackward0'] == softmax
    assert theirs == ours + (query_bytes if call == 'self' else 0)
    for p in stock.parameters():
        p.requires_grad_(True)
    trained, _ = attention_region(lean, query, key, value)
    assert ours < trained <= attention_region(stock, query, key, value)[0]
    assert attention_region(lean, query, key, value, need_weights=False)[0] <= attention_region(
        stock, query, key, value, need_weights=False)[0]


def test_attention_dropout_keeps_what_stock_keeps():
    stock, lean = pair(dtype=torch.float32, batch_first=True, dropout=0.2)
    for p in stock.parameters():
        p.requires_grad_(False)
    query = torch.randn(BATCH, QUERIES, EMBED, requires_grad=True)
    other = torch.randn(BATCH, KEYS, EMBED, requires_grad=True)
    ours, ours_per_op = attention_region(lean, query, other, other)
    theirs, theirs_per_op = attention_region(stock, query, other, other)
    assert ours == theirs and ours_per_op == theirs_per_op
    # dropout on the CPU is the product with a float mask: kept beside the softmax output (and the dropped
    # weights, the second product's operand)
    assert ours_per_op['MulBackward0'] == ours_per_op['SoftmaxBackward0'] == BATCH * HEADS * QUERIES * KEYS * 4


# --- choosing, swapping, fine-tuning a block ------------------------------------------------------------


class AttentionBlock(nn.Module):
    """Patch embedding (a strided conv) -> ``(B, N, C)`` tokens -> ``x + attn(LayerNorm(x))`` -> a linear
    classifier per token; the attention as mmcv's wrapper calls it (``(N, B, C)``, three transposed views)."""

    def __init__(self, dim=16, classes=5, **kwargs):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, **kwargs)
        self.head = nn.Linear(dim, classes)

    def forward(self, image):
        x = self.embed(image).flatten(2).mT
        y = self.norm(x)
        kv = y if self.attn._qkv_same_embed_dim else y[..., :self.attn.kdim]
        x = x + self.attn(y.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1))[0].transpose(0, 1)
        return self.head(x)


ORDER = ['embed', 'attn.q_proj', 'attn.k_proj', 'attn.v_proj', 'attn.out_proj', 'head']


def block(seed=0, **kwargs):
    torch.manual_seed(seed)
    return AttentionBlock(**kwargs)


def test_num_layers_chooses_the_query_key_and_value_projections_together_and_fine_tunes_them():
    stock = block()
    model = copy.deepcopy(stock)
    region = FineTuneRegion(num_layers=3)
    paths = region.apply(model, example_forward(model))
    assert trace_layer_order(model, example_forward(model)) == ORDER
    assert paths == ORDER[1:]  # v_proj, out_proj, head, and q_proj and k_proj, which v_proj trains with
    assert [type(model.get_submodule(p)) for p in paths] == [HOSVDProjection] * 3 + [HOSVDLinear] * 2
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        'attn.in_proj_weight', 'attn.in_proj_bias', 'attn.out_proj.weight', 'attn.out_proj.bias', 'head.weight',
        'head.bias'}
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in stock.named_parameters()]
    assert list(model.state_dict()) == list(stock.state_dict())
    stock.eval(), model.eval()
    x = images()
    torch.testing.assert_close(model(x), stock(x))
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(x).square().mean().backward()
    grad = model.attn.in_proj_weight.grad
    assert all(grad[i * 16:(i + 1) * 16].abs().sum() > 0 for i in range(3))
    projections = [model.get_submodule(p) for p in paths[:3]]
    assert all(m.last_input_shape == (3, 35, 16) and m.layer_name == p for m, p in zip(projections, paths))
    before = model.attn.in_proj_weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.attn.in_proj_weight)
    stock.load_state_dict(model.state_dict(), strict=True)
    summary = region.summary(model)
    for path in paths[:3]:
        row = next(line for line in summary.splitlines() if f' {path} ' in line)
        assert 'HOSVDProjection' in row and ' 16x16 ' in row and ' 272 ' in row, row  # its rows: 16 x 16 + 16
    assert region.apply(model, example_forward(model)) == paths  # idempotent
    assert [model.get_submodule(p) for p in paths[:3]] == projections


def test_naming_one_of_the_tied_projections_names_the_others():
    model = block()
    with pytest.raises(ValueError, match=r"layers=\['attn.q_proj'\] leaves out \['attn.k_proj', 'attn.v_proj'\], "
                                         r"which read rows of the same Parameters \(an attention's in_proj_weight"):
        FineTuneRegion(layers=['attn.q_proj']).apply(model)
    FineTuneRegion(layers=['attn.out_proj']).apply(model)  # a Parameter of its own
    assert type(model.attn.out_proj) is HOSVDLinear and not model.attn.in_proj_weight.requires_grad
    with pytest.raises(ValueError, match=r"'attn.q_proj' is an AttentionProjection: method='gradfilt' \(Gradient "
                                         r'Filter\) is for convolutions only'):
        FineTuneRegion(method='gradfilt', layers=['attn.q_proj', 'attn.k_proj', 'attn.v_proj']).apply(block())


def test_separate_weights_are_tied_by_their_bias_only():
    """With kdim/vdim the projections have weights of their own; only in_proj_bias ties them."""
    model = block(kdim=8, vdim=8)
    with pytest.raises(ValueError, match=r"leaves out \['attn.q_proj', 'attn.v_proj'\]"):
        FineTuneRegion(layers=['attn.k_proj']).apply(model)
    model = block(kdim=8, vdim=8, bias=False)
    FineTuneRegion(method='svd', layers=['attn.k_proj']).apply(model)
    assert type(model.attn.k_proj) is SVDProjection and type(model.attn.q_proj) is AttentionProjection
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {'attn.k_proj_weight'}
    model.train()
    model(images()).sum().backward()
    assert model.attn.k_proj_weight.grad.abs().sum() > 0 and model.attn.q_proj_weight.grad is None
    assert model.attn.k_proj.last_input_shape == (3, 35, 8)


def test_projections_at_eps_one_fine_tune_exactly():
    """At eps 1 with the batch mode truncated too, the compressed projections' gradients are the stock
    attention's: choosing, exposing, swapping and freezing change nothing."""
    stock, model = block().double(), block().double()  # float64: exactly
    region = FineTuneRegion(num_layers=6, explained_variance=1.0, truncate_batch=True, norm_input_bits=None,
                            gelu_bits=None)
    assert region.apply(model, lambda: model(torch.zeros(1, 3, 14, 10, dtype=torch.float64))) == ORDER
    stock.train(), model.train()
    x = images().double()
    stock(x).square().mean().backward()
    model(x).square().mean().backward()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(trained) == sorted(n for n, _ in stock.named_parameters() if not n.startswith('norm.'))
    for name, p in stock.named_parameters():
        if name in trained:
            torch.testing.assert_close(trained[name].grad, p.grad)


def test_swapping_methods_and_again():
    model = block()
    expose_attention_projections(model)
    paths = ['attn.q_proj', 'attn.k_proj', 'attn.v_proj']
    swapped = swap_layers(model, paths, 'hosvd', 0.8)
    assert swap_layers(model, paths, 'hosvd', 0.6, center=False) == swapped
    assert all(m.explained_variance == 0.6 and not m.center for m in swapped.values())
    assert 'explained_variance=0.6' in repr(model.attn.q_proj)
    model = block()
    region = FineTuneRegion(method='none', layers=paths)
    region.apply(model)
    assert type(model.attn.q_proj) is AttentionProjection and model.attn.in_proj_weight.requires_grad
    assert not model.attn.out_proj.weight.requires_grad


def test_the_memory_tool_lists_the_projections():
    from mmseg_actcomp.memory.report import build_report, format_summary
    model = block()
    region = FineTuneRegion(num_layers=4, explained_variance=0.8)
    paths = region.apply(model, example_forward(model))
    model.train()
    step = measure_step(model, lambda: model(images()).square().mean(), paths)
    for path in paths[:3]:
        row = step.layers[path]
        assert row.type == 'HOSVDProjection' and row.input_shape == (3, 35, 16)
        assert row.kept_bytes == model.get_submodule(path).last_kept_bytes <= row.vanilla_bytes
    table = format_summary(build_report([step], paths, {}))
    for path in paths[:3]:
        assert any(line.startswith(path) and 'HOSVDProjection' in line for line in table.splitlines()), table


# --- SegFormer MiT-B0 -----------------------------------------------------------------------------------

SEGFORMER = 'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py'
#: SyncBN -> BN, no checkpoint, 64x64, and no random drop (paths, dropout) so that runs compare exactly
SEGFORMER_OPTIONS = {'model.decode_head.norm_cfg': dict(type='BN', requires_grad=True), 'model.backbone.init_cfg': None,
                     'model.data_preprocessor.size': (64, 64), 'model.backbone.drop_path_rate': 0.0,
                     'model.decode_head.dropout_ratio': 0.0}
LAST_ATTENTION = 'backbone.layers.3.1.1.attn.attn'


@pytest.fixture(scope='module')
def segformer():
    from conftest import build_model_from_config, mmseg_config
    return build_model_from_config(mmseg_config(SEGFORMER), SEGFORMER_OPTIONS)[1]


def test_segformer_chooses_its_attention_projections(segformer):
    """MiT-B0's 8 attentions are exposed (4 layers each: 72 layers in all); the last 10 end with the last
    attention's output projection, 11 reach its value projection and take its query and key along."""
    from mmseg_actcomp.ops.region import trainable_inference_layers
    model = copy.deepcopy(segformer)
    assert FineTuneRegion(num_layers=10).choose(model)[0] == f'{LAST_ATTENTION}.out_proj'
    assert len(trainable_inference_layers(model)) == 72
    paths = FineTuneRegion(num_layers=11).choose(model)
    assert len(paths) == 13 and paths[:4] == [f'{LAST_ATTENTION}.{p}' for p in ('q_proj', 'k_proj', 'v_proj',
                                                                                 'out_proj')]
    with pytest.raises(ValueError, match='leaves out'):
        FineTuneRegion(layers=[f'{LAST_ATTENTION}.v_proj']).choose(model)


def test_segformer_attention_keeps_what_stock_keeps(segformer):
    """Every parameter frozen but the first patch embedding (so that gradients reach every block): the 8
    attentions of MiT-B0 keep exactly what stock's keep (each query tensor differs from its key and value:
    stock computes key and value together, which keeps as much as computing them apart)."""
    stock, model = copy.deepcopy(segformer), copy.deepcopy(segformer)
    expose_attention_projections(model)
    attentions = [p for p, m in model.named_modules() if isinstance(m, LeanMultiheadAttention)]
    assert len(attentions) == 8
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    saved = []
    for m in (stock, model):
        for name, p in m.named_parameters():
            p.requires_grad_(name.startswith('backbone.layers.0.0.projection'))
        m.train()
        step = measure_step(m, lambda: m(x, mode='tensor').sum(), [f'{p}.out_proj' for p in attentions])
        saved.append((step.saved['region'], {op: row['bytes'] for op, row in step.saved['per_op']['region'].items()}))
    (theirs, theirs_per_op), (ours, ours_per_op) = saved
    assert ours == theirs > 0 and ours_per_op['SoftmaxBackward0'] == theirs_per_op['SoftmaxBackward0'] > 0
    assert ours_per_op == theirs_per_op and set(ours_per_op) == {'SoftmaxBackward0', 'BmmBackward0'}


@pytest.mark.slow
def test_segformer_training_step_with_the_hook_choosing_its_last_10_layers(segformer):
    """The hook's num_layers=10 on MiT-B0: the last attention's output projection is chosen with the last
    MLP and the head; one training step at eps 1 gives every chosen layer the uncompressed model's weight
    gradient (float64: exactly), the start-up summary lists the projection, and the state dict after an
    optimizer step loads into stock mmseg and back."""
    from mmseg_actcomp.hooks.activation_compression_hook import ActivationCompressionHook
    stock, model = copy.deepcopy(segformer).double(), copy.deepcopy(segformer).double()  # float64: exact
    hook = ActivationCompressionHook(num_layers=10, explained_variance=1.0, truncate_batch=True,
                                     norm_input_bits=None, gelu_bits=None)
    paths = hook.region.apply(model)
    out_proj = f'{LAST_ATTENTION}.out_proj'
    assert paths[0] == out_proj and type(model.get_submodule(out_proj)) is HOSVDLinear
    assert any(line.split()[1:3] == [out_proj, 'HOSVDLinear'] for line in hook.region.summary(model).splitlines())
    for name, p in stock.named_parameters():
        p.requires_grad_(dict(model.named_parameters())[name].requires_grad)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stock.train()
    stock(x, mode='tensor').square().mean().backward()
    model.train()
    hook.region.set_norms_eval()
    model(x, mode='tensor').square().mean().backward()
    for path in paths:
        grad = model.get_submodule(path).weight.grad
        assert grad.abs().sum() > 0
        torch.testing.assert_close(grad, stock.get_submodule(path).weight.grad)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    state = model.state_dict()
    assert list(state) == list(segformer.state_dict())
    fresh = copy.deepcopy(segformer).double()
    fresh.load_state_dict(state, strict=True)
    trained = model.get_submodule(out_proj).weight
    assert torch.equal(fresh.get_submodule(out_proj).weight, trained)
    assert not torch.equal(segformer.get_submodule(out_proj).weight.double(), trained)
    model.load_state_dict(segformer.state_dict(), strict=True)
