"""What the tests of mmseg_actcomp.ops.lean share: bit-identity, the activations a module keeps, the bytes a
model keeps, BatchNorms with non-trivial statistics, and gradients."""
import torch
from torch import nn

from mmseg_actcomp.memory import measure_step

INT_OF = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
          torch.float64: torch.int64}


def assert_bit_identical(actual, expected):
    """Same shape, dtype and bits (NaN payloads and the sign of zero included)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual.contiguous().view(INT_OF[actual.dtype]),
                       expected.contiguous().view(INT_OF[expected.dtype]))


def activations(saved, module):
    """The saved tensors that are none of ``module``'s parameters and buffers."""
    own = {t.data_ptr() for t in list(module.parameters()) + list(module.buffers())}
    return [t for t in saved if t.data_ptr() not in own]


def saved_bytes(model, x):
    """Bytes of the activation storages one forward of ``model`` on ``x`` keeps for backward (each
    storage once, parameters and buffers left out), and the bytes per backward op; runs the backward."""
    # A plain sum: its backward keeps nothing, so every byte counted is the model's.
    step = measure_step(model, lambda: model(x).sum(), [''])
    return step.saved['total'], {op: row['bytes'] for op, row in step.saved['per_op']['rest'].items()}


def randomize_bn(model, seed=0):
    """Non-trivial running statistics and affine parameters for every BN of ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                c = bn.num_features
                bn.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def run_grads(model, x, seed=1):
    """Gradients of ``<model(x), g>`` (g fixed by ``seed``) w.r.t. ``x`` and every trainable parameter."""
    x = x.detach().clone().requires_grad_()
    out = model(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, [x] + params, g)
    return out, dict(zip(['input'] + names, grads))


def token_activation(shape=(2, 49, 32), components=6, outliers=0, seed=0, dtype=torch.float32):
    """Transformer tokens ``(B, N, C)`` as a block's residual stream looks: ``sum_j a_j (x) c_j / j`` over
    ``components`` token and feature loadings, plus noise, each token scaled by its own factor in [1, 4]
    (token norms differ) and, with ``outliers``, that many features shifted by about 20 in every token (the
    outlier features of trained transformers)."""
    g = torch.Generator().manual_seed(seed)
    b, n, c = shape
    weights = 1.0 / torch.arange(1, components + 1)
    x = torch.einsum('j,bnj,jc->bnc', weights, torch.randn(b, n, components, generator=g),
                     torch.randn(components, c, generator=g))
    x = (x + 0.3 * torch.randn(shape, generator=g)) * (1 + 3 * torch.rand(b, n, 1, generator=g) ** 4)
    if outliers:
        features = torch.randperm(c, generator=g)[:outliers]
        x[..., features] += 20 * (1 + 0.2 * torch.randn(b, n, outliers, generator=g))
    return x.to(dtype)


def relative_error(actual, expected):
    """``||actual - expected|| / ||expected||`` (Frobenius), as a float."""
    return float((actual.double() - expected.double()).norm() / expected.double().norm())
