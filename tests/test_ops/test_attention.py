"""Tests of mmseg_actcomp.ops.attention: LeanMultiheadAttention computes what nn.MultiheadAttention computes
(outputs, weights, gradients; float64 gradcheck) with the same Parameters and state-dict keys, and keeps no
more for backward."""
import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mmseg_actcomp.memory import measure_step
from mmseg_actcomp.ops.attention import AttentionProjection, LeanMultiheadAttention, expose_attention_projections

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
