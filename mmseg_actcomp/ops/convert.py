"""Choose convolutions of any ``nn.Module`` and swap them for compressed ones, in place.

Generic model surgery, pure torch: layers are named by their module path (``model.get_submodule``),
chosen either explicitly or as the last N convolutions in the order a forward pass runs them.
"""
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from torch import nn

from .compressed import CompressedLayer
from .conv import HOSVDConv2d, SVDConv2d
from .gradfilt import GradFilterConv2d

#: method name -> layer type that replaces an ``nn.Conv2d`` (None: keep the plain conv)
CONV_TYPES = {'hosvd': HOSVDConv2d, 'svd': SVDConv2d, 'gradfilt': GradFilterConv2d, 'none': None}
#: the layer types that record what they keep of their input for backward (``last_kept_bytes``,
#: ``last_vanilla_bytes``, ``last_input_shape``; HOSVD/SVD also ``last_ranks``)
KEEPING_TYPES = (CompressedLayer, GradFilterConv2d)


def trace_conv_order(model: nn.Module, run_forward: Callable[[], object]) -> List[str]:
    """Module paths of ``model``'s ``nn.Conv2d`` layers in the order ``run_forward()`` first calls them.

    Registration order is not forward order (e.g. a ResNet block registers ``downsample`` last but a
    head may define its classifier first), hence tracing. Convs that the forward never calls are left out.
    """
    order: List[str] = []
    handles = []
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_pre_hook(
                lambda m, args, path=path: None if path in order else order.append(path)))
    try:
        run_forward()
    finally:
        for h in handles:
            h.remove()
    return order


def check_conv_path(model: nn.Module, path: str) -> nn.Conv2d:
    """The ``nn.Conv2d`` at ``path``; ValueError naming the path and what is there otherwise."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f'layers: {path!r} is not a module of {type(model).__name__}') from None
    if not isinstance(module, nn.Conv2d):
        inner = [f'{path}.{name}' for name, m in module.named_modules() if isinstance(m, nn.Conv2d) and name]
        hint = f'; its convolutions are {inner[:6]}' if inner else ''
        raise ValueError(f'layers: {path!r} is a {type(module).__name__}, not a convolution '
                         f'(nn.Conv2d){hint}')
    return module


def select_last(order: Sequence[str], num_layers: int) -> List[str]:
    """The last ``num_layers`` of ``order``; ValueError if the model has fewer convolutions."""
    if not 1 <= num_layers <= len(order):
        raise ValueError(f'num_layers={num_layers} but the model runs {len(order)} convolutions in its '
                         f'forward pass: choose 1 <= num_layers <= {len(order)}')
    return list(order[len(order) - num_layers:])


def swap_convs(model: nn.Module, paths: Iterable[str], method: str,
               explained_variance: float, center: bool = True, subspace: str = 'exact',
               subspace_batches: int = 8, truncate_batch: bool = True,
               patch_size: int = 2) -> Dict[str, nn.Conv2d]:
    """Replace each conv at ``paths`` by the layer type of ``method`` (:data:`CONV_TYPES`), sharing its
    parameters: for ``'svd'``/``'hosvd'`` with ``explained_variance``, ``center``, ``subspace``,
    ``subspace_batches`` and ``truncate_batch`` as in :class:`~mmseg_actcomp.ops.CompressedConv2d`, for
    ``'gradfilt'`` with ``patch_size`` as in :class:`~mmseg_actcomp.ops.GradFilterConv2d`.

    Idempotent: a layer already of the wanted type only gets ``explained_variance`` and ``center`` (resp.
    ``patch_size``) updated (and keeps its subspace state); a different ``truncate_batch`` makes a new twin.
    Returns path -> the layer now in the model (plain ``nn.Conv2d`` for ``method='none'``).
    """
    if method not in CONV_TYPES:
        raise ValueError(f'method={method!r} is not one of {sorted(CONV_TYPES)}')
    new_type = CONV_TYPES[method]
    if new_type is GradFilterConv2d:
        options = updated = dict(patch_size=patch_size)
    else:
        options = dict(explained_variance=explained_variance, center=center, subspace=subspace,
                       subspace_batches=subspace_batches, truncate_batch=truncate_batch)
        updated = dict(explained_variance=explained_variance, center=bool(center))
    swapped = {}
    for path in paths:
        conv = check_conv_path(model, path)
        if new_type is None:
            swapped[path] = conv
            continue
        if type(conv) is new_type and getattr(conv, 'truncate_batch', truncate_batch) == truncate_batch:
            for name, value in updated.items():
                setattr(conv, name, value)
        else:
            conv = new_type.from_conv(conv, **options)
            conv.layer_name = path
            model.set_submodule(path, conv)
        swapped[path] = conv
    return swapped


def freeze_all_but(model: nn.Module, trainable: Iterable[nn.Module]) -> List[str]:
    """Set ``requires_grad`` False on every parameter outside the ``trainable`` modules (whose own
    parameters are set True). Returns the names of the trainable parameters."""
    keep = {id(p) for m in trainable for p in m.parameters()}
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in keep)
        if id(p) in keep:
            names.append(name)
    return names


def compression_stats(layers: Dict[str, nn.Module]) -> Optional[Dict[str, float]]:
    """Total kept / vanilla bytes of the last forward that kept something of ``layers``' inputs
    (:data:`KEEPING_TYPES`: HOSVD/SVD factors, gradient-filter patch sums), and for HOSVD/SVD layers the
    mean rank per mode, the mean fraction of input energy kept (``kept_energy``: ``||x_hat||^2 / ||x||^2``,
    what the weight gradient sees) and the number of layers that kept their input whole (``kept_whole``);
    None if none of them has kept anything yet."""
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
