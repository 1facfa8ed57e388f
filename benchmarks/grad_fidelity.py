"""How close is the weight gradient a compressed conv computes to the exact one? Per fine-tuned layer and
ε, on real batches through a trained network: the cosine similarity and the norm ratio of the weight
gradient from the decomposed input against the exact weight gradient, the ranks, and the fraction of
the input's energy kept; each also with the input centred first (its per-channel mean kept exactly, the
decomposition spent on the rest: what the hook's ``center=True`` keeps).

    python benchmarks/grad_fidelity.py [--model deeplabv3 | segformer] [--checkpoints CKPT ...] [--batches 3]
        [--eps 0.7 0.8 0.9] [--subspace-batches 5] [--out docs/grad_fidelity.md]

A second section asks which mode's truncation loses the weight gradient: the centred HOSVD at each ε with
only some of the four modes truncated (all four: the paper's; the batch mode alone; the channel mode alone;
height and width; channel, height and width: the batch mode kept whole, the hook's ``truncate_batch=False``).

A third section compares HOSVD's subspace options (the layers' ``subspace='exact'``, ``'warm'``,
``'frozen'``, issue 14) at eps 0.8, centred: the inputs of ``--subspace-batches`` consecutive training
batches go through a :class:`~mmseg_actcomp.ops.HOSVDConv2d` twin of each layer in order, as training would
feed it (``'frozen'`` estimating on the first 2, ``'warm'`` starting each batch from the previous one's
bases), with the hook's default ``truncate_batch``, and the weight gradient each computes on the batches
after the first 2 is compared with the exact one.

By default the checkpoints are the learning benchmark's calibrated start, the ends of its first HOSVD eps 0.8
runs, uncentred (the paper's decomposition) and centred, and the end of its first run of the hook's default
(benchmarks/finetune.py writes them): the ranks and gradients before and after compressed fine-tuning.

The network runs vanilla (``method='none'`` on the same 10 layers, so nothing in the forward changes);
each layer's input ``x: (B, C, H, W)`` and output gradient are captured, and ``grad_W`` is recomputed
from ``x`` and from its reconstruction ``x_hat`` with ``torch.nn.grad.conv2d_weight``. HOSVD truncates all
four modes, SVD the batch mode (:mod:`mmseg_actcomp.compression`).

``--model segformer`` measures the transformer layers the same way on SegFormer-MiT-B0 trained from random
weights on the learning benchmark's source task (``configs/finetune/segformer_mit-b0_source_*``, no MiT
weights ship here), fed the target task: its last MiT block (the attention's query, key, value and output
projections, the Mix-FFN's three convs) and the head's six convs. There every layer, conv or linear, is
measured through the compressed layer the hook would put in its place (:func:`measure_layers`: the weight
gradient that layer computes, with the hook's default ``truncate_batch``), and the modes section, written
for 4-mode conv inputs, is left out. A last section there measures what the lean region's quantized saves
cost (:func:`lean_figures`): each GELU (its derivative in ``gelu_bits``), LayerNorm and BatchNorm2d (their
normalised or whole input in ``norm_input_bits``) on the gradient's path, its input gradient at each bits
against the op's own; then the fine-tuned layers' weight gradients with the whole region made lean at the
hook's defaults and at each op family's bits.
"""
import argparse
import copy
import os.path as osp
import sys
import time
from statistics import mean

import torch
from torch import nn
from torch.nn.grad import conv2d_weight

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/finetune/deeplabv3_mv2-d8_none-10L_1xb8-100it_vocfinetune-128x128.py'
CHECKPOINTS = ['work_dirs/finetune/calibrate/iter_100.pth', 'work_dirs/finetune/hosvd-0.8-uncentred/seed0/iter_100.pth',
               'work_dirs/finetune/hosvd-0.8/seed0/iter_100.pth', 'work_dirs/finetune/default-10L/seed0/iter_100.pth']
SEGFORMER_SOURCE = 'configs/finetune/segformer_mit-b0_source_1xb8-500it_vocfinetune-128x128.py'
SEGFORMER_WORK_DIR = 'work_dirs/finetune/segformer/source'
#: --model: (the config whose hook names the layers, run vanilla on the target task; the default checkpoints;
#: whether the layers are measured through their compressed twins, and the lean region's ops too; how to
#: make the checkpoints)
MODELS = {
    'deeplabv3': (CONFIG, CHECKPOINTS, False, 'python benchmarks/finetune.py'),
    'segformer': ('configs/finetune/segformer_mit-b0_none-13L_1xb8-100it_vocfinetune-128x128.py',
                  [SEGFORMER_WORK_DIR + '/iter_500.pth'], True,
                  f'python tools/train.py {SEGFORMER_SOURCE} --work-dir {SEGFORMER_WORK_DIR}'),
}
#: the modes section: which modes the centred HOSVD truncates, by name
MODE_SETS = {'all four (the paper)': (0, 1, 2, 3), 'batch': (0,), 'channel': (1,), 'height and width': (2, 3),
             'channel, height, width (batch whole)': (1, 2, 3)}


class InputAndGradient:
    """Captures each watched layer's input ``x`` and output gradient ``dy`` of one forward+backward (a layer
    whose output needs no gradient, e.g. a norm before every fine-tuned layer, is left out)."""

    def __init__(self, layers):
        self.layers, self.seen, self.handles = layers, {}, []

    def __enter__(self):
        for path, layer in self.layers.items():
            self.handles.append(layer.register_forward_hook(self._forward(path)))
        return self

    def _forward(self, path):
        def hook(module, args, output):
            if not output.requires_grad:
                return
            x = args[0].detach()
            self.seen[path] = {'x': x}
            output.register_hook(lambda dy: self.seen[path].__setitem__('dy', dy.detach()))
        return hook

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def weight_gradient(conv, x, dy):
    """``dL/dW`` of ``conv`` for input ``x: (B, C, H, W)`` and output gradient ``dy: (B, O, H', W')``."""
    return conv2d_weight(x, conv.weight.shape, dy, conv.stride, conv.padding, conv.dilation, conv.groups)


def layer_weight_gradient(layer, x, dy):
    """``dL/dP`` of the Parameter ``P`` that ``layer`` trains (its weight; an attention projection's: the
    attention's ``in_proj_weight``, zero outside the projection's rows) for input ``x`` and output gradient
    ``dy``, through ``layer``'s own forward and backward (a compressed layer: from what it kept)."""
    from mmseg_actcomp.ops.convert import trained_parameters
    weight = trained_parameters(layer)[0]
    with torch.enable_grad():
        return torch.autograd.grad(layer(x), weight, dy)[0]


def measure_layers(captured, eps_values=(0.7, 0.8, 0.9), methods=('hosvd', 'svd')):
    """:func:`measure`'s rows for layers of any kind (convs, linear layers, attention projections), each
    measured through its compressed twin (:func:`~mmseg_actcomp.ops.convert.compressed_twin`, the hook's
    default ``truncate_batch``, which SVD, truncating only the batch mode, sets as the hook does; *plain*:
    ``center=False``, *centred*: ``center=True``) against the layer's exact weight gradient; ranks, KiB and
    energy are the twin's ``last_ranks``, ``last_kept_bytes`` and ``last_kept_energy``."""
    from mmseg_actcomp.hooks import default_options
    from mmseg_actcomp.ops.convert import compressed_twin
    truncate_batch = default_options()['truncate_batch']
    figures = {}
    for layers, inputs in captured:
        for path, layer in layers.items():
            x, dy = inputs[path]
            exact = layer_weight_gradient(layer, x, dy).flatten()
            for method in methods:
                for eps in eps_values:
                    for variant, center in (('plain', False), ('centred', True)):
                        twin = compressed_twin(layer, method, explained_variance=eps, center=center,
                                               truncate_batch=truncate_batch or method == 'svd').train()
                        approx = layer_weight_gradient(twin, x, dy).flatten()
                        figures.setdefault((path, method, eps, variant), []).append(
                            (float(torch.nn.functional.cosine_similarity(approx, exact, dim=0)),
                             float(approx.norm() / exact.norm()), float(twin.last_kept_energy),
                             tuple(twin.last_ranks), twin.last_kept_bytes))
    return _mean_rows(figures)


def approximations(x, eps, method):
    """``{name: (x_hat, ranks, kept bytes)}``: the decomposition of ``x: (B, C, H, W)``, and that of ``x``
    centred per channel (the mean ``(C,)`` kept too)."""
    from mmseg_actcomp.compression import METHODS, compress, reconstruct
    plain = compress(x, eps, METHODS[method])
    mu = x.mean(dim=(0, 2, 3), keepdim=True)
    centred = compress(x - mu, eps, METHODS[method])
    return {'plain': (reconstruct(plain), plain.ranks, plain.nbytes),
            'centred': (mu + reconstruct(centred), centred.ranks, centred.nbytes + mu.numel() * mu.element_size())}


def measure(captured, eps_values=(0.7, 0.8, 0.9), methods=('hosvd', 'svd')):
    """Rows ``{layer, method, eps, variant, cos, norm_ratio, energy, ranks, kib}``, each the mean over the
    batches of ``captured`` (:func:`captured_batches`; ranks: the largest)."""
    figures = {}
    for convs, inputs in captured:
        for path, conv in convs.items():
            x, dy = inputs[path]
            exact = weight_gradient(conv, x, dy).flatten()
            for method in methods:
                for eps in eps_values:
                    for variant, (x_hat, ranks, nbytes) in approximations(x, eps, method).items():
                        approx = weight_gradient(conv, x_hat, dy).flatten()
                        cell = figures.setdefault((path, method, eps, variant), [])
                        cell.append((float(torch.nn.functional.cosine_similarity(approx, exact, dim=0)),
                                     float(approx.norm() / exact.norm()),
                                     float(x_hat.square().sum() / x.square().sum()), ranks, nbytes))
    return _mean_rows(figures)


def _mean_rows(figures):
    """Rows of :func:`measure` from ``{(layer, method, eps, variant): [(cos, norm ratio, energy, ranks,
    bytes) per batch]}``: the means over the batches (ranks: the largest)."""
    return [dict(layer=path, method=method, eps=eps, variant=variant, cos=mean(c[0] for c in cells),
                 norm_ratio=mean(c[1] for c in cells), energy=mean(c[2] for c in cells),
                 ranks=[max(c[3][i] for c in cells) for i in range(len(cells[0][3]))],
                 kib=mean(c[4] for c in cells) / 1024)
            for (path, method, eps, variant), cells in figures.items()]


def measure_modes(captured, eps_values=(0.8,)):
    """Rows ``{layer, eps, modes, cos, kib}``: the weight gradient from the centred HOSVD of each layer's
    input truncated along each of :data:`MODE_SETS` only (as the layers decompose it: the mean kept in the
    decomposition), against the exact one; the mean over the batches of ``captured`` (KiB: the largest)."""
    from mmseg_actcomp.compression import compress, reconstruct
    figures = {}
    for convs, inputs in captured:
        for path, conv in convs.items():
            x, dy = inputs[path]
            exact = weight_gradient(conv, x, dy).flatten()
            for eps in eps_values:
                for name, modes in MODE_SETS.items():
                    tucker = compress(x, eps, modes, center=True)
                    approx = weight_gradient(conv, reconstruct(tucker), dy).flatten()
                    figures.setdefault((path, eps, name), []).append(
                        (float(torch.nn.functional.cosine_similarity(approx, exact, dim=0)), tucker.nbytes))
    return [dict(layer=path, eps=eps, modes=name, cos=mean(c[0] for c in cells),
                 kib=max(c[1] for c in cells) / 1024) for (path, eps, name), cells in figures.items()]


def modes_section(rows):
    """The markdown of :func:`measure_modes`' rows for one checkpoint."""
    lines = []
    for eps in dict.fromkeys(r['eps'] for r in rows):
        lines += [f'### HOSVD ε {eps:g}, centred: which truncated mode loses the weight gradient', '',
                  'Each column truncates only the named modes of the input at ε and keeps the others whole; '
                  'cos against the exact weight gradient, KiB kept (the largest over the batches).', '',
                  '| layer | ' + ' | '.join(f'{m} cos | KiB' for m in MODE_SETS) + ' |',
                  '| --- |' + ' --- | --- |' * len(MODE_SETS)]
        by_key = {(r['layer'], r['modes']): r for r in rows if r['eps'] == eps}
        for layer in dict.fromkeys(r['layer'] for r in rows):
            cells = [by_key[(layer, m)] for m in MODE_SETS]
            lines.append(f'| {layer} | ' + ' | '.join(f'{c["cos"]:.3f} | {c["kib"]:.1f}' for c in cells) + ' |')
        lines.append('')
        for m in MODE_SETS:
            cells = [r for r in rows if r['eps'] == eps and r['modes'] == m]
            lines.append(f'- {m}: mean cos {mean(r["cos"] for r in cells):.3f}, '
                         f'{sum(r["kib"] for r in cells):.1f} KiB kept by the {len(cells)} layers')
        lines.append('')
    return lines


#: the subspace section: options compared, the threshold, and the batches 'frozen' estimates on (and
#: that are left out of the figures for every option)
SUBSPACES, SUBSPACE_EPS, ESTIMATE_BATCHES = ('exact', 'warm', 'frozen'), 0.8, 2


def measure_subspaces(captured):
    """Rows ``{layer, subspace, cos, norm_ratio, energy, ranks}`` for HOSVD eps :data:`SUBSPACE_EPS`: each
    layer's HOSVD twin (:func:`~mmseg_actcomp.ops.convert.compressed_twin`) per subspace option fed its inputs of the
    consecutive batches of ``captured`` (:func:`captured_batches`); figures the mean over the batches after
    the first :data:`ESTIMATE_BATCHES` (ranks: the largest), ``energy`` the layer's ``last_kept_energy``."""
    from mmseg_actcomp.hooks import default_options
    from mmseg_actcomp.ops.convert import compressed_twin
    truncate_batch = default_options()['truncate_batch']
    rows = []
    for path, layer in captured[0][0].items():
        for subspace in SUBSPACES:
            twin = compressed_twin(layer, 'hosvd', explained_variance=SUBSPACE_EPS, center=True, subspace=subspace,
                                   subspace_batches=ESTIMATE_BATCHES if subspace == 'frozen' else 8,
                                   truncate_batch=truncate_batch).train()
            cells = []
            for index, (_, inputs) in enumerate(captured):
                x, dy = inputs[path]
                approx = layer_weight_gradient(twin, x, dy).flatten()
                if index >= ESTIMATE_BATCHES:
                    exact = layer_weight_gradient(layer, x, dy).flatten()
                    cells.append((float(torch.nn.functional.cosine_similarity(approx, exact, dim=0)),
                                  float(approx.norm() / exact.norm()), float(twin.last_kept_energy),
                                  twin.last_ranks))
            rows.append(dict(layer=path, subspace=subspace, cos=mean(c[0] for c in cells),
                             norm_ratio=mean(c[1] for c in cells), energy=mean(c[2] for c in cells),
                             ranks=[max(c[3][i] for c in cells) for i in range(len(cells[0][3]))]))
    return rows


def vanilla_network(checkpoint, batches, config=CONFIG):
    """``(model, layer paths, loss of a batch, batches)``: ``config``'s segmentor from ``checkpoint`` with its
    hook applied (``method='none'``: the chosen layers trainable, nothing compressed), in training mode, and
    its first ``batches`` training batches."""
    from mmseg_actcomp.apis.segmentor import (SegmentorLoss, apply_compression_hook, build_segmentor,
                                              load_config, set_train_mode, train_batches)
    cfg = load_config(osp.join(REPO, config))
    data = train_batches(cfg, batches)
    model = build_segmentor(cfg, checkpoint)
    region, paths = apply_compression_hook(cfg, model)
    set_train_mode(model, region)
    return model, paths, SegmentorLoss(model), data


def captured_batches(checkpoint, batches, config=CONFIG):
    """``[(layers, {path: (x, dy)}), ...]`` per training batch of ``config``, the first ``batches`` of them,
    the network run vanilla from ``checkpoint`` (``layers``: the layers its hook chooses, path -> module),
    in training mode, its dropout and drop-path masks drawn from seed 0 (so that a rerun gives the same
    figures)."""
    from mmseg_actcomp.apis.segmentor import seeded_global_rngs
    model, paths, loss_of, data = vanilla_network(checkpoint, batches, config)
    layers = {p: model.get_submodule(p) for p in paths}
    captured = []
    with seeded_global_rngs(0):
        for batch in data:
            with InputAndGradient(layers) as probe:
                loss_of(batch).backward()
            model.zero_grad(set_to_none=True)
            captured.append((layers, {p: (probe.seen[p]['x'], probe.seen[p]['dy']) for p in paths}))
    return captured


def subspace_section(rows, batches):
    """The markdown of :func:`measure_subspaces`' rows for one checkpoint."""
    lines = [f'### HOSVD ε {SUBSPACE_EPS:g}, centred, the hook\'s truncate_batch: subspace options', '',
             f'{batches} consecutive batches through each layer\'s twin, figures over the last '
             f'{batches - ESTIMATE_BATCHES} (`frozen` estimated its bases on the first {ESTIMATE_BATCHES}; '
             '`warm` starts each batch from the previous one\'s bases). energy: the layer\'s '
             '`last_kept_energy`.', '',
             '| layer | ' + ' | '.join(f'{s} ranks | {s} energy | {s} cos' for s in SUBSPACES) + ' |',
             '| --- |' + ' --- |' * (3 * len(SUBSPACES))]
    by_key = {(r['layer'], r['subspace']): r for r in rows}
    for layer in dict.fromkeys(r['layer'] for r in rows):
        cells = [by_key[(layer, s)] for s in SUBSPACES]
        lines.append(f'| {layer} | ' + ' | '.join(f'{"x".join(map(str, c["ranks"]))} | {c["energy"]:.3f} | '
                                                  f'{c["cos"]:.3f}' for c in cells) + ' |')
    lines.append('')
    for subspace in SUBSPACES:
        cells = [r for r in rows if r['subspace'] == subspace]
        lines.append(f'- {subspace}: mean cos {mean(r["cos"] for r in cells):.3f}, mean norm ratio '
                     f'{mean(r["norm_ratio"] for r in cells):.3f}, mean energy {mean(r["energy"] for r in cells):.3f}')
    return lines + ['']


#: the lean-ops section (issue 23): the ops whose backward keeps a quantized tensor instead of their input
#: (:func:`~mmseg_actcomp.ops.lean.make_lean`), the hook key setting their bits, and the bits measured (the
#: hook's defaults among them)
LEAN_OPS = {'GELU': (nn.GELU, 'gelu_bits', (2, 4, 8)),
            'LayerNorm': (nn.LayerNorm, 'norm_input_bits', (1, 2, 4, 8)),
            'BatchNorm2d': (nn.BatchNorm2d, 'norm_input_bits', (1, 2, 4, 8))}


def make_lean_at(module, norm_input_bits=None, gelu_bits=None):
    """Make ``module``'s children lean in place as the hook's ``lean_region`` does (``make_lean`` with the
    hook's defaults but these bits; None: that op keeps its input whole); ``module`` itself is not swapped."""
    from mmseg_actcomp.hooks import default_options
    from mmseg_actcomp.ops.lean import make_lean
    options = default_options()
    make_lean(module, options['explained_variance'], options['method'], norm_input_bits, gelu_bits)


def lean_copy(module, norm_input_bits=None, gelu_bits=None):
    """The lean twin the hook's ``lean_region`` puts in place of ``module`` at these bits
    (:func:`make_lean_at`), made of a copy: ``module`` and its running statistics are left alone."""
    holder = nn.Sequential(copy.deepcopy(module))  # make_lean never swaps the root it is given
    make_lean_at(holder, norm_input_bits, gelu_bits)
    return holder[0]


def op_gradients(op, x, dy):
    """``(dL/dx, dL/dweight)`` of ``op`` for input ``x`` and output gradient ``dy`` (same shape as ``x``); the
    second None where ``op`` has no trainable weight."""
    x = x.detach().requires_grad_()
    weight = getattr(op, 'weight', None)
    wanted = [x] + ([weight] if isinstance(weight, nn.Parameter) and weight.requires_grad else [])
    with torch.enable_grad():
        grads = torch.autograd.grad(op(x), wanted, dy)
    return grads[0], grads[1] if len(grads) > 1 else None


def relative_error(approx, exact):
    """``||approx - exact|| / ||exact||`` of two tensors of one shape."""
    return float((approx - exact).norm() / exact.norm())


def dropout_off(model):
    """Put ``model``'s dropout and drop-path layers in eval mode (identity), so that two runs of it differ
    only by what they keep for backward."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) or type(module).__name__ == 'DropPath':
            module.eval()
    return model


def cosine(a, b):
    """Cosine similarity of two tensors of one shape, in float64 (float32 sums over millions of elements
    stray above 1)."""
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def measure_lean_ops(captured, region):
    """Rows ``{op, kind, in_region, bits, dx_error, dx_cos, dw_error}``: each op of :data:`LEAN_OPS` in
    ``captured`` (``[{path: (op, x, dy)}]`` per batch) made lean (:func:`lean_copy`) at each of its bits,
    against the op itself: the relative error and cosine of its input gradient, the relative error of its
    weight's gradient (None where frozen); means over the batches. ``in_region``: the op is inside one of
    the ``region`` modules (the modules the hook makes lean)."""
    inside = {id(m) for root in region for m in root.modules()}
    rows = []
    for path, (op, _, _) in captured[0].items():
        kind = next(name for name, (cls, _, _) in LEAN_OPS.items() if isinstance(op, cls))
        _, key, bits_values = LEAN_OPS[kind]
        # on a copy: a BN on batch statistics would update the network's running statistics
        exact = [op_gradients(copy.deepcopy(op), *batch[path][1:]) for batch in captured]
        for bits in bits_values:
            twin = lean_copy(op, **{key: bits})
            cells = []
            for batch, (dx, dw) in zip(captured, exact):
                dx_hat, dw_hat = op_gradients(twin, *batch[path][1:])
                cells.append((relative_error(dx_hat, dx), cosine(dx_hat, dx),
                              None if dw is None else relative_error(dw_hat, dw)))
            rows.append(dict(op=path, kind=kind, bits=bits, in_region=id(op) in inside,
                             dx_error=mean(c[0] for c in cells), dx_cos=mean(c[1] for c in cells),
                             dw_error=None if cells[0][2] is None else mean(c[2] for c in cells)))
    return rows


def lean_settings():
    """``[(norm_input_bits, gelu_bits), ...]`` the whole region is measured at: nothing quantized (the
    harness's own check: cos 1), the hook's defaults, then each op family's bits with the other kept whole."""
    from mmseg_actcomp.hooks import default_options
    options = default_options()
    return ([(None, None), (options['norm_input_bits'], options['gelu_bits'])]
            + [(None, b) for b in LEAN_OPS['GELU'][2]] + [(b, None) for b in LEAN_OPS['BatchNorm2d'][2]])


def fine_tuned_gradients(model, paths, loss_of, data):
    """``[{path: dL/dP}]`` per batch of ``data``: the gradient of each fine-tuned layer's Parameter ``P``
    (layers sharing one, an attention's query/key/value projections, give it once, under the first path)."""
    from mmseg_actcomp.ops.convert import trained_parameters
    weights = {}
    for path in paths:
        weight = trained_parameters(model.get_submodule(path))[0]
        if all(weight is not w for w in weights.values()):
            weights[path] = weight
    grads = []
    for batch in data:
        loss_of(batch).backward()
        grads.append({p: w.grad.detach().clone() for p, w in weights.items()})
        model.zero_grad(set_to_none=True)
    return grads


def measure_lean_region(model, paths, region, data, loss_function=None):
    """Rows ``{norm_input_bits, gelu_bits, mean_cos, min_cos, min_layer, mean_norm_ratio}``: the fine-tuned
    layers' weight gradients with the ``region`` modules made lean (as the hook does, on a copy of ``model``,
    dropout off in both) at each of :func:`lean_settings`, against ``model``'s own; cosines per layer are
    means over the batches, ``min`` the worst layer. ``loss_function``: network -> (batch -> loss), by
    default the segmentor's (:class:`~mmseg_actcomp.apis.segmentor.SegmentorLoss`)."""
    from mmseg_actcomp.apis.segmentor import SegmentorLoss
    loss_function = loss_function or SegmentorLoss
    dropout_off(model)
    exact = fine_tuned_gradients(model, paths, loss_function(model), data)
    rows = []
    for norm_bits, gelu_bits in lean_settings():
        lean = copy.deepcopy(model)
        for root in region:
            make_lean_at(lean.get_submodule(root), norm_bits, gelu_bits)
        approx = fine_tuned_gradients(dropout_off(lean), paths, loss_function(lean), data)
        cos = {p: mean(cosine(a[p], e[p]) for a, e in zip(approx, exact)) for p in exact[0]}
        ratio = mean(float(a[p].norm() / e[p].norm()) for a, e in zip(approx, exact) for p in e)
        worst = min(cos, key=cos.get)
        rows.append(dict(norm_input_bits=norm_bits, gelu_bits=gelu_bits, mean_cos=mean(cos.values()),
                         min_cos=cos[worst], min_layer=worst, mean_norm_ratio=ratio, layers=len(cos)))
    return rows


def lean_figures(checkpoint, batches, config):
    """``(rows of measure_lean_ops(), rows of measure_lean_region())`` of ``config``'s network from
    ``checkpoint`` on its first ``batches`` training batches: the ops of :data:`LEAN_OPS` measured are those
    the gradient passes through on its way to a fine-tuned layer (inside the hook's region or not)."""
    from mmseg_actcomp.ops.region import region_modules
    model, paths, loss_of, data = vanilla_network(checkpoint, batches, config)
    region = sorted(set(region_modules(paths)) - set(paths))
    kinds = tuple(cls for cls, _, _ in LEAN_OPS.values())
    ops = {p: m for p, m in model.named_modules() if isinstance(m, kinds)}
    captured = []
    dropout_off(model)
    for batch in data:
        with InputAndGradient(ops) as probe:
            loss_of(batch).backward()
        model.zero_grad(set_to_none=True)
        captured.append({p: (ops[p], seen['x'], seen['dy']) for p, seen in probe.seen.items() if 'dy' in seen})
    return (measure_lean_ops(captured, [model.get_submodule(r) for r in region]),
            measure_lean_region(model, paths, region, data))


def lean_section(op_rows, region_rows, batches):
    """The markdown of :func:`lean_figures`' rows."""
    def bits(value):
        return 'whole' if value is None else str(value)

    lines = ['### Lean region ops: what their quantized saves cost the gradients', '',
             f'Over {batches} batches, dropout and drop path off. Per op: each GELU, LayerNorm and BatchNorm2d '
             'the gradient passes through on its way to a fine-tuned layer, made lean as the hook\'s `lean_region` '
             'makes it (GELU: its derivative kept in `gelu_bits`; a norm on batch statistics: its input, a '
             'LayerNorm: its normalised input, in `norm_input_bits`), against the op itself: the relative error '
             '`||g\' - g|| / ||g||` and cosine of its input gradient, the relative error of its weight\'s gradient '
             'where that trains. *region*: inside a module the hook makes lean (the others keep their input whole '
             'and are measured as they would be there).', '',
             '| op | kind | region | bits | input-gradient error | input-gradient cos | weight-gradient error |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for r in op_rows:
        weight = '' if r['dw_error'] is None else f"{r['dw_error']:.4f}"
        lines.append(f"| {r['op']} | {r['kind']} | {'yes' if r['in_region'] else 'no'} | {r['bits']} | "
                     f"{r['dx_error']:.4f} | {r['dx_cos']:.4f} | {weight} |")
    lines.append('')
    for kind in dict.fromkeys(r['kind'] for r in op_rows):
        for b in dict.fromkeys(r['bits'] for r in op_rows if r['kind'] == kind):
            cells = [r for r in op_rows if r['kind'] == kind and r['bits'] == b]
            low, high = (f'{100 * f(r["dx_error"] for r in cells):.1f}' for f in (min, max))
            lines.append(f'- {kind} at {b} bit{"s" * (b > 1)}: input gradient off by '
                         f'{low if low == high else f"{low}-{high}"} % ({len(cells)} of them)')
    lines += ['', 'Through the whole region: the fine-tuned layers\' weight gradients with every region module '
              'made lean at these bits (on a copy of the network) against vanilla\'s; mean and worst cosine over '
              'the layers (an attention\'s query, key and value share one Parameter: counted once), '
              'each the mean over the batches.', '',
              '| norm_input_bits | gelu_bits | layers | mean cos | worst cos | worst layer | mean norm ratio |',
              '| --- | --- | --- | --- | --- | --- | --- |']
    for r in region_rows:
        lines.append(f"| {bits(r['norm_input_bits'])} | {bits(r['gelu_bits'])} | {r['layers']} | {r['mean_cos']:.4f} | "
                     f"{r['min_cos']:.4f} | {r['min_layer']} | {r['mean_norm_ratio']:.4f} |")
    return lines + ['']


def markdown(results, command, seconds, twins=False):
    """The page: ``results`` is ``[(checkpoint, rows of measure() or measure_layers(), rows of
    measure_modes() or None, rows of measure_subspaces(), its batches, lean_figures() or None), ...]``;
    ``twins``: the method rows come from :func:`measure_layers`."""
    title = 'layers (convs, linear layers, attention projections)' if twins else 'convs'
    lines = [f'# Weight-gradient fidelity of compressed {title}, per layer', '',
             f'Written by `{command}` ({seconds:.0f} s on this machine). Do not edit: rerun the command.', '',
             'KiB: what the layer keeps of its input (core and factors; centred: also the mean). '
             'cos: cosine similarity of the weight gradient from the decomposed input with the exact one; '
             'norm: its norm over the exact one\'s; energy: ||x_hat||^2 / ||x||^2; ranks: the largest '
             'over the batches (B, C, H, W for HOSVD; B for SVD). *centred*: the per-channel mean over '
             '(B, H, W) kept exactly, the rest decomposed at the same ε.', '']
    if twins:
        lines += ['Here every figure is the compressed layer\'s own (the twin the hook swaps in, sharing the '
                  'layer\'s weights), with the hook\'s default `truncate_batch` (HOSVD keeps the batch mode whole): '
                  'a conv\'s ranks are B, C, H, W, a linear layer\'s or attention projection\'s B, N, C (batch, '
                  'tokens, channels), its centring the mean over batch and tokens. An attention projection\'s '
                  'weight gradient is that of its rows of `in_proj_weight`. SegFormer-MiT-B0 was trained from '
                  f'random weights on the source task (`{SEGFORMER_SOURCE}`; no MiT weights ship here) and is fed '
                  'the target task\'s batches.', '']
    for checkpoint, rows, mode_rows, subspace_rows, batches, lean in results:
        lines += [f'## Weights: `{checkpoint}`', '']
        lines += _method_sections(rows)
        if mode_rows is not None:
            lines += modes_section(mode_rows)
        lines += subspace_section(subspace_rows, batches)
        if lean is not None:
            lines += lean_section(*lean)
    return '\n'.join(lines)


def _method_sections(rows):
    lines = []
    for method in dict.fromkeys(r['method'] for r in rows):
        lines += [f'### {method.upper()}', '', '| layer | ε | ranks | KiB | energy | cos | norm | centred ranks '
                  '| centred KiB | centred energy | centred cos | centred norm |', '| --- |' + ' --- |' * 11]
        by_key = {(r['layer'], r['eps'], r['variant']): r for r in rows if r['method'] == method}
        for (layer, eps, variant), r in by_key.items():
            if variant != 'plain':
                continue
            c = by_key[(layer, eps, 'centred')]
            lines.append(f'| {layer} | {eps:g} | {"x".join(map(str, r["ranks"]))} | {r["kib"]:.1f} | '
                         f'{r["energy"]:.3f} | {r["cos"]:.3f} | {r["norm_ratio"]:.3f} | '
                         f'{"x".join(map(str, c["ranks"]))} | {c["kib"]:.1f} | {c["energy"]:.3f} | '
                         f'{c["cos"]:.3f} | {c["norm_ratio"]:.3f} |')
        lines.append('')
        for eps in dict.fromkeys(r['eps'] for r in rows):
            for variant in ('plain', 'centred'):
                cells = [r for r in rows if r['method'] == method and r['eps'] == eps and r['variant'] == variant]
                lines.append(f'- {method} ε {eps:g}, {variant}: mean cos {mean(r["cos"] for r in cells):.3f}, '
                             f'mean norm ratio {mean(r["norm_ratio"] for r in cells):.3f}, '
                             f'{sum(r["kib"] for r in cells):.1f} KiB kept by the {len(cells)} layers')
        lines.append('')
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', choices=list(MODELS), default='deeplabv3',
                   help='the network and layers measured: DeepLabV3-MobileNetV2 (the learning benchmark\'s 10 '
                        'convs) or SegFormer-MiT-B0 (its last MiT block and head, trained on the source task)')
    p.add_argument('--checkpoints', nargs='+',
                   help="trained weights (default: deeplabv3: the learning benchmark's calibrated start and the "
                        'ends of its first HOSVD eps 0.8 and default runs; segformer: its source-task training)')
    p.add_argument('--batches', type=int, default=3)
    p.add_argument('--eps', type=float, nargs='+', default=[0.7, 0.8, 0.9])
    p.add_argument('--subspace-batches', type=int, default=5,
                   help=f'batches for the subspace section (> {ESTIMATE_BATCHES}: the first '
                        f'{ESTIMATE_BATCHES} estimate frozen bases)')
    p.add_argument('--out', help='write the markdown page here (e.g. docs/grad_fidelity.md)')
    args = p.parse_args(argv)
    if args.batches < 1:
        p.error(f'--batches must be >= 1, got {args.batches}')
    if args.subspace_batches <= ESTIMATE_BATCHES:
        p.error(f'--subspace-batches must be > {ESTIMATE_BATCHES}, got {args.subspace_batches}')
    config, default_checkpoints, twins, make_command = MODELS[args.model]
    args.checkpoints = args.checkpoints or default_checkpoints
    for checkpoint in args.checkpoints:
        if not osp.isfile(osp.join(REPO, checkpoint)):
            sys.exit(f'no checkpoint at {checkpoint}: run `{make_command}` first (it writes the default '
                     'ones), or give --checkpoints')
    start = time.time()
    results = []
    for checkpoint in args.checkpoints:  # one vanilla pass per batch, shared by the sections
        captured = captured_batches(osp.join(REPO, checkpoint), max(args.batches, args.subspace_batches), config)
        eps = tuple(args.eps)
        results.append((checkpoint,
                        (measure_layers if twins else measure)(captured[:args.batches], eps),
                        None if twins else measure_modes(captured[:args.batches], eps),
                        measure_subspaces(captured[:args.subspace_batches]), args.subspace_batches,
                        (*lean_figures(osp.join(REPO, checkpoint), args.batches, config), args.batches)
                        if twins else None))
    command = 'python benchmarks/grad_fidelity.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    text = markdown(results, command.strip(), time.time() - start, twins)
    print(text)
    if args.out:
        with open(osp.join(REPO, args.out), 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
