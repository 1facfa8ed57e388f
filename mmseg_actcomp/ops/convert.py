"""Choose convolutions, linear layers and attention projections of any ``nn.Module`` and swap them for
compressed ones, in place.

Generic model surgery, pure torch: layers are named by their module path (``model.get_submodule``),
chosen either explicitly or as the last N such layers in the order a forward pass runs them. A layer
trains its Parameters whole: layers that read one Parameter (an attention's query, key and value
projections, rows of one ``in_proj_weight``) are chosen together (:func:`tied_layers`).
"""
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from torch import nn

from .attention import AttentionProjection, HOSVDProjection, SVDProjection
from .compressed import CompressedLayer
from .conv import HOSVDConv2d, SVDConv2d
from .gradfilt import GradFilterConv2d
from .linear import HOSVDLinear, SVDLinear

#: the layer kinds that can be chosen -> method name -> the layer type that replaces one (None: keep it as it
#: is). Gradient Filter is for convolutions only (its patches are spatial): a linear layer has no entry.
#: An attention projection is a :class:`~mmseg_actcomp.ops.attention.LeanMultiheadAttention`'s ``q_proj``,
#: ``k_proj`` or ``v_proj`` (its ``out_proj`` is an ``nn.Linear``).
LAYER_TYPES = {
    nn.Conv2d: {'hosvd': HOSVDConv2d, 'svd': SVDConv2d, 'gradfilt': GradFilterConv2d, 'none': None},
    nn.Linear: {'hosvd': HOSVDLinear, 'svd': SVDLinear, 'none': None},
    AttentionProjection: {'hosvd': HOSVDProjection, 'svd': SVDProjection, 'none': None},
}
#: method name -> layer type that replaces an ``nn.Conv2d`` (None: keep the plain conv); its keys are the
#: methods
CONV_TYPES = LAYER_TYPES[nn.Conv2d]
#: the layer types that record what they keep of their input for backward (``last_kept_bytes``,
#: ``last_vanilla_bytes``, ``last_input_shape``; HOSVD/SVD also ``last_ranks``)
KEEPING_TYPES = (CompressedLayer, GradFilterConv2d)
#: what the layer choice says it counts, in messages
CHOSEN_KINDS = 'convolutions, linear layers and attention projections (nn.Conv2d, nn.Linear, AttentionProjection)'


def layer_kind(module: nn.Module) -> Optional[type]:
    """The key of :data:`LAYER_TYPES` that ``module`` is an instance of (subclasses, compressed twins
    included), or None for a module that cannot be chosen."""
    return next((kind for kind in LAYER_TYPES if isinstance(module, kind)), None)


def trace_layer_order(model: nn.Module, run_forward: Callable[[], object]) -> List[str]:
    """Module paths of ``model``'s layers of :data:`LAYER_TYPES`' kinds in the order ``run_forward()``
    first calls them.

    Registration order is not forward order (e.g. a ResNet block registers ``downsample`` last but a
    head may define its classifier first), hence tracing. Layers that the forward never calls are left out,
    e.g. a stock ``nn.MultiheadAttention``'s ``out_proj``, whose weight it reads directly
    (:func:`~mmseg_actcomp.ops.attention.expose_attention_projections` makes them layers).
    """
    order: List[str] = []
    handles = []
    for path, module in model.named_modules():
        if layer_kind(module) is not None:
            handles.append(module.register_forward_pre_hook(
                lambda m, args, path=path: None if path in order else order.append(path)))
    try:
        run_forward()
    finally:
        for h in handles:
            h.remove()
    return order


def check_layer_path(model: nn.Module, path: str, method: Optional[str] = None) -> nn.Module:
    """The layer of a :data:`LAYER_TYPES` kind at ``path``; ValueError naming the path and what is there
    otherwise, or (with ``method``) naming the layer and why ``method`` cannot compress it."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f'layers: {path!r} is not a module of {type(model).__name__}') from None
    kind = layer_kind(module)
    if kind is None:
        inner = [f'{path}.{name}' for name, m in module.named_modules() if layer_kind(m) is not None and name]
        hint = f'; the layers inside it are {inner[:6]}' if inner else ''
        raise ValueError(f'layers: {path!r} is a {type(module).__name__}, not one of the {CHOSEN_KINDS}{hint}')
    parent = model.get_submodule(path.rpartition('.')[0]) if '.' in path else model
    if type(parent) is nn.MultiheadAttention:
        raise ValueError(f'layers: {path!r} is the {path.rpartition(".")[2]} of an nn.MultiheadAttention, which '
                         'reads its weight directly and never calls it: make its projections layers first '
                         '(expose_attention_projections, as FineTuneRegion does)')
    if method is not None and method not in LAYER_TYPES[kind]:
        name = f'nn.{kind.__name__}' if kind.__module__.startswith('torch.') else kind.__name__
        raise ValueError(f"{path!r} is an {name}: method={method!r} (Gradient Filter) is for "
                         "convolutions only, its patches being spatial; give layers=[...] that are convolutions, "
                         f"or use one of {sorted(LAYER_TYPES[kind])}")
    return module


def select_last(order: Sequence[str], num_layers: int) -> List[str]:
    """The last ``num_layers`` of ``order``; ValueError if the model has fewer layers to choose from."""
    if not 1 <= num_layers <= len(order):
        raise ValueError(f'num_layers={num_layers} but the model runs {len(order)} {CHOSEN_KINDS} in its '
                         f'forward pass: choose 1 <= num_layers <= {len(order)}')
    return list(order[len(order) - num_layers:])


def tied_layers(model: nn.Module, paths: Iterable[str]) -> List[str]:
    """The layers of ``model`` not in ``paths`` that read a Parameter one of ``paths`` trains
    (:func:`trained_parameters`): fine-tuning that layer trains them too, so they must be chosen with it.
    Only an attention's query, key and value projections share Parameters (rows of one ``in_proj_weight``,
    or of one ``in_proj_bias``). Sorted by path."""
    paths = list(paths)
    trained = {id(p) for path in paths for p in trained_parameters(model.get_submodule(path))}
    return sorted(path for path, module in model.named_modules() if layer_kind(module) is not None
                  and path not in paths and any(id(p) in trained for p in trained_parameters(module)))


def trained_parameters(layer: nn.Module) -> List[nn.Parameter]:
    """The Parameters that fine-tuning ``layer`` trains: its own, or the attention's that an attention
    projection reads rows of (:meth:`~mmseg_actcomp.ops.attention.AttentionProjection.source_parameters`)."""
    if isinstance(layer, AttentionProjection):
        return layer.source_parameters()
    return list(layer.parameters())


def compressed_twin(layer: nn.Module, method: str, **options) -> nn.Module:
    """The layer type of ``method`` for ``layer``'s kind (:data:`LAYER_TYPES`) sharing ``layer``'s
    parameters, built with ``options`` (e.g. ``explained_variance``, ``center``, ``truncate_batch``): what
    :func:`swap_layers` puts in a model, on its own (e.g. to compare its gradients with ``layer``'s)."""
    kind = layer_kind(layer)
    if kind is None:
        raise TypeError(f'{type(layer).__name__} is none of the {CHOSEN_KINDS}')
    new_type = LAYER_TYPES[kind].get(method)
    if new_type is None:
        kinds = {kind.__name__: sorted(m for m, t in types.items() if t) for kind, types in LAYER_TYPES.items()}
        raise ValueError(f'method={method!r} has no layer type for {type(layer).__name__}; the methods per kind: '
                         f'{kinds}')
    return _twin(new_type, layer, options)


def _twin(new_type: type, layer: nn.Module, options: dict) -> nn.Module:
    """A ``new_type`` sharing ``layer``'s parameters (its ``from_conv``, ``from_linear`` or
    ``from_projection``)."""
    if isinstance(layer, nn.Conv2d):
        return new_type.from_conv(layer, **options)
    if isinstance(layer, AttentionProjection):
        return new_type.from_projection(layer, **options)
    return new_type.from_linear(layer, **options)


def swap_layers(model: nn.Module, paths: Iterable[str], method: str,
                explained_variance: float, center: bool = True, subspace: str = 'exact',
                subspace_batches: int = 8, truncate_batch: bool = True,
                patch_size: int = 2) -> Dict[str, nn.Module]:
    """Replace each conv, linear layer or attention projection at ``paths`` by the layer type of ``method``
    for its kind (:data:`LAYER_TYPES`), sharing its parameters: for ``'svd'``/``'hosvd'`` with
    ``explained_variance``, ``center``, ``subspace``, ``subspace_batches`` and ``truncate_batch`` as in
    :class:`~mmseg_actcomp.ops.CompressedConv2d` / :class:`~mmseg_actcomp.ops.CompressedLinear`, for
    ``'gradfilt'`` (convolutions only: ValueError naming another layer) with ``patch_size`` as in
    :class:`~mmseg_actcomp.ops.GradFilterConv2d`.

    Idempotent: a layer already of the wanted type only gets ``explained_variance`` and ``center`` (resp.
    ``patch_size``) updated (and keeps its subspace state); a different ``truncate_batch`` makes a new twin.
    Returns path -> the layer now in the model (the layer as it was for ``'none'``).
    """
    if method not in CONV_TYPES:
        raise ValueError(f'method={method!r} is not one of {sorted(CONV_TYPES)}')
    if method == 'gradfilt':
        options = updated = dict(patch_size=patch_size)
    else:
        options = dict(explained_variance=explained_variance, center=center, subspace=subspace,
                       subspace_batches=subspace_batches, truncate_batch=truncate_batch)
        updated = dict(explained_variance=explained_variance, center=bool(center))
    swapped = {}
    for path in paths:
        layer = check_layer_path(model, path, method)
        new_type = LAYER_TYPES[layer_kind(layer)][method]
        if new_type is None:
            swapped[path] = layer
            continue
        if type(layer) is new_type and getattr(layer, 'truncate_batch', truncate_batch) == truncate_batch:
            for name, value in updated.items():
                setattr(layer, name, value)
        else:
            layer = _twin(new_type, layer, options)
            layer.layer_name = path
            model.set_submodule(path, layer)
        swapped[path] = layer
    return swapped


def freeze_all_but(model: nn.Module, trainable: Iterable[nn.Module]) -> List[str]:
    """Set ``requires_grad`` False on every parameter outside the ``trainable`` modules (whose
    :func:`trained_parameters` are set True). Returns the names of the trainable parameters."""
    keep = {id(p) for m in trainable for p in trained_parameters(m)}
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in keep)
        if id(p) in keep:
            names.append(name)
    return names


def compression_stats(layers: Dict[str, nn.Module]) -> Optional[Dict[str, float]]:
    """Total kept / vanilla bytes of the last forward that kept something of ``layers``' inputs
    (:data:`KEEPING_TYPES`: HOSVD/SVD factors, gradient-filter patch sums), and for HOSVD/SVD layers the
    mean rank per mode (``rank_mode{k}``: mode ``k`` of each layer's input, batch first, over the layers
    that have it: a conv's channel is mode 2, a linear layer's is its last), the mean fraction of input
    energy kept (``kept_energy``: ``||x_hat||^2 / ||x||^2``, what the weight gradient sees) and the number of
    layers that kept their input whole (``kept_whole``); None if none of them has kept anything yet."""
    recorded = [m for m in layers.values() if isinstance(m, KEEPING_TYPES) and m.last_kept_bytes is not None]
    if not recorded:
        return None
    stats = {}
    ranked = [m for m in recorded if isinstance(m, CompressedLayer) and m.last_ranks is not None]
    for mode in range(max((len(m.last_ranks) for m in ranked), default=0)):
        ranks = [m.last_ranks[mode] for m in ranked if len(m.last_ranks) > mode]
        stats[f'rank_mode{mode + 1}'] = sum(ranks) / len(ranks)
    stats['kept_MiB'] = sum(m.last_kept_bytes for m in recorded) / 2**20
    stats['vanilla_MiB'] = sum(m.last_vanilla_bytes for m in recorded) / 2**20
    stats['kept_ratio'] = stats['kept_MiB'] / stats['vanilla_MiB'] if stats['vanilla_MiB'] else 0.0
    energies = [float(m.last_kept_energy) for m in ranked if m.last_kept_energy is not None]
    if energies:
        stats['kept_energy'] = sum(energies) / len(energies)
    if ranked:
        # layers that kept their input whole (no smaller decomposition, or no solver converged)
        stats['kept_whole'] = float(sum(bool(m.last_kept_whole) for m in ranked))
    return stats
