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
