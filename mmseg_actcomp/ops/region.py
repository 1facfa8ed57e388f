"""The fine-tuned region of a segmentor and the surgery that makes it, in one plain class.

:class:`FineTuneRegion` holds what ``ActivationCompressionHook``'s config line says (method, eps, which
layers, what to freeze, how the region's BNs run) and does it to a bare model: make attention projections
layers, choose the convolutions, linear layers and attention projections, swap them for compressed ones, make
the rest of their region lean, freeze everything else, keep frozen BNs on running statistics.
The hook, the memory tool and the benchmarks all call it; only the hook knows
about runners.
"""
import math
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..compression import METHODS, QUANTIZATION_BITS, validate_bits, validate_explained_variance
from ..utils.table import align
from ..utils.validate import require_integer
from .attention import expose_attention_projections
from .budget import MIB, Cost, budget_table, calibration_costs, choose_explained_variance, unchanged
from .compressed import CompressedLayer, validate_subspace
from .convert import (CHOSEN_KINDS, CONV_TYPES, check_layer_path, compression_stats, freeze_all_but, select_last,
                      swap_layers, tied_layers, trace_layer_order)
from .gradfilt import GradFilterConv2d, validate_patch_size
from .lean.batchnorm import LeanBatchNorm2d
from .lean.layernorm import LeanLayerNorm
from .lean.make import make_lean
from .precise_bn import preserved_training_modes


def parent_path(path: str) -> str:
    """``'a.b.c'`` -> ``'a.b'``; ``'a'`` -> ``''`` (the root)."""
    return path.rpartition('.')[0]


def region_modules(layer_paths: Iterable[str]) -> List[str]:
    """The fine-tuned region: the chosen layer paths and their parent modules (the root excluded), sorted
    and unique. A parent is the layer's mmcv ``ConvModule``, residual block or head."""
    modules = set()
    for path in layer_paths:
        modules.add(path)
        parent = parent_path(path)
        if parent:
            modules.add(parent)
    return sorted(modules)


class FineTuneRegion:
    """Which convolutions, linear layers and attention projections to fine-tune, how they keep their inputs,
    and what else trains;
    :meth:`apply` does it to a model. Every argument is the ``ActivationCompressionHook`` key of the same name (its
    docstring says what each does); bad values raise ``ValueError`` naming the value and what is allowed.

    After :meth:`apply`: ``layer_paths`` (the chosen layers, in forward order), ``fine_tuned`` (path ->
    layer), ``eval_norms`` (the BNs to run on running statistics in training: :meth:`set_norms_eval`) and
    ``region_norms`` (those of them inside the region that still train: what precise BN re-estimates).
    With ``memory_budget_mib``, after :meth:`fit_budget`: ``budget_choice`` (path -> the chosen
    ``explained_variance``) and ``budget_table`` (the choice as a printable table).

    ``method='gradfilt'`` takes ``patch_size`` and no ``explained_variance``, ``center``, ``subspace`` or
    ``memory_budget_mib`` (the last two raise unless left at their defaults; ``center`` is ignored, as for
    ``'none'``), and convolutions only: a chosen linear layer raises a ``ValueError`` naming it. Its lean
    region's BNs, where ``gamma`` trains on running statistics, keep ``x_hat`` whole (``norm_method``
    ``'none'``: the BNs know only decompositions, and the filter has none).
    """

    def __init__(self, method: str = 'hosvd', explained_variance: float = 0.9,
                 num_layers: Optional[int] = None, layers: Optional[Sequence[str]] = None,
                 freeze_others: bool = True, lean_region: bool = True,
                 freeze_region_norm_stats: bool = False, precise_norm_batches: int = 0,
                 norm_input_bits: Optional[int] = 2, center: bool = True, subspace: str = 'exact',
                 subspace_batches: int = 8, memory_budget_mib: Optional[float] = None,
                 budget_batches: int = 2, truncate_batch: bool = False, patch_size: int = 2,
                 gelu_bits: Optional[int] = 4) -> None:
        if method not in CONV_TYPES:
            raise ValueError(f'method={method!r} is not allowed; use one of {sorted(CONV_TYPES)}')
        try:
            self.explained_variance = validate_explained_variance(explained_variance)
        except (ValueError, TypeError) as e:
            raise ValueError(f'explained_variance: {e}') from None
        if (num_layers is None) == (layers is None):
            raise ValueError('give exactly one of num_layers=N and layers=[paths], got '
                             f'num_layers={num_layers!r}, layers={layers!r}')
        if num_layers is not None:
            require_integer('num_layers', num_layers, 1)
        if layers is not None and (isinstance(layers, str) or not layers
                                   or not all(isinstance(p, str) for p in layers)):
            raise ValueError(f'layers={layers!r} must be a non-empty list of module paths (str)')
        if len(set(layers or ())) != len(layers or ()):
            raise ValueError(f'layers={list(layers)!r} names a layer twice')
        if not isinstance(center, bool):
            raise ValueError(f'center={center!r} must be True or False')
        if not isinstance(truncate_batch, bool):
            raise ValueError(f'truncate_batch={truncate_batch!r} must be True or False')
        # SVD's one mode is the batch mode: it always truncates it
        self.truncate_batch = truncate_batch or method == 'svd'
        require_integer('precise_norm_batches', precise_norm_batches, 0)
        validate_key_bits('norm_input_bits', norm_input_bits, 'region BN and LayerNorm inputs')
        validate_key_bits('gelu_bits', gelu_bits, 'region GELU inputs')
        if method != 'none':
            validate_subspace(method, subspace, subspace_batches)
        self.patch_size = validate_patch_size(patch_size)
        self.subspace, self.subspace_batches = subspace, subspace_batches
        validate_budget(method, memory_budget_mib, budget_batches)
        self.memory_budget_mib, self.budget_batches = memory_budget_mib, budget_batches
        self.budget_choice: Dict[str, float] = {}
        self.budget_table: Optional[str] = None
        self.method = method
        self.num_layers = num_layers
        self.layers = list(layers) if layers is not None else None
        self.freeze_others = bool(freeze_others)
        self.lean_region = bool(lean_region) and method != 'none'
        #: what the lean region's BNs keep of ``x_hat`` for a trainable ``gamma`` on running statistics
        self.norm_method = method if method in METHODS else 'none'
        self.freeze_region_norm_stats = bool(freeze_region_norm_stats) and self.lean_region
        if precise_norm_batches and not self.freeze_region_norm_stats:
            raise ValueError(f'precise_norm_batches={precise_norm_batches} re-estimates the statistics of '
                             'BNs that run on them: it needs freeze_region_norm_stats=True (and '
                             'lean_region=True, method svd, hosvd or gradfilt)')
        self.precise_norm_batches = precise_norm_batches
        self.norm_input_bits = norm_input_bits
        self.gelu_bits = gelu_bits
        self.center = center and method in METHODS
        self.layer_paths: List[str] = []
        self.fine_tuned: Dict[str, nn.Module] = {}
        self.eval_norms: List[_BatchNorm] = []
        self.region_norms: List[_BatchNorm] = []

    def choose(self, model: nn.Module, run_forward: Optional[Callable[[], object]] = None) -> List[str]:
        """The layer paths to fine-tune, once every ``nn.MultiheadAttention`` of ``model`` is a
        :class:`~mmseg_actcomp.ops.attention.LeanMultiheadAttention` (in place; the same Parameters and
        state-dict keys, its query, key, value and output projections now layers): ``layers`` as given
        (checked), or the last ``num_layers`` convs, linear layers and attention projections of the inference
        forward that the model does not freeze itself (EMANet's bases), :func:`trainable_inference_layers`
        (``run_forward``: see there), and the projections tied to a chosen one
        (:func:`~mmseg_actcomp.ops.convert.tied_layers`: an attention's query, key and value projections
        read rows of one Parameter, which trains whole: up to two layers more)."""
        expose_attention_projections(model)
        if self.layers is None:
            order = trainable_inference_layers(model, run_forward)
            chosen = select_last(order, self.num_layers)
            chosen += tied_layers(model, chosen)
            paths = [p for p in order if p in chosen]
        else:
            paths = list(self.layers)
        for path in paths:
            check_layer_path(model, path, self.method)
        tied = tied_layers(model, paths)
        if tied:
            raise ValueError(f'layers={paths!r} leaves out {tied}, which read rows of the same Parameters (an '
                             "attention's in_proj_weight or in_proj_bias trains whole): name them too")
        return paths

    def apply(self, model: nn.Module, run_forward: Optional[Callable[[], object]] = None) -> List[str]:
        """Choose (:meth:`choose`), swap, make lean and freeze, in place, on a bare (unwrapped) segmentor, or
        any ``nn.Module`` with ``run_forward``. Idempotent. Returns the chosen paths; call
        :meth:`set_norms_eval` after every ``model.train()``."""
        paths = self.choose(model, run_forward)
        swap_layers(model, paths, self.method, self.explained_variance, self.center, self.subspace,
                   self.subspace_batches, self.truncate_batch, self.patch_size)
        if self.lean_region:
            for root in sorted(set(region_modules(paths)) - set(paths)):
                make_lean(model.get_submodule(root), self.explained_variance, self.norm_method,
                          self.norm_input_bits, self.gelu_bits)
        self.fine_tuned = {p: model.get_submodule(p) for p in paths}
        self.layer_paths = list(paths)
        trainable_ids = set()
        if self.freeze_others:
            trainable = list(self.fine_tuned.values()) + convmodule_norms(model, paths)
            freeze_all_but(model, trainable)
            trainable_ids = {id(m) for m in trainable}

        def frozen(m):
            return (self.freeze_others and id(m) not in trainable_ids
                    and not any(p.requires_grad for p in m.parameters()))

        self.eval_norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and (
            frozen(m) or (self.freeze_region_norm_stats and isinstance(m, LeanBatchNorm2d)))]
        self.region_norms = [m for m in self.eval_norms if isinstance(m, LeanBatchNorm2d) and not frozen(m)]
        return self.layer_paths

    def subspace_states(self) -> Dict[str, Dict[str, object]]:
        """``subspace='warm'`` or ``'frozen'``: layer path -> its
        :meth:`~mmseg_actcomp.ops.CompressedLayer.subspace_state` (layers without one yet left out)."""
        states = {path: layer.subspace_state() for path, layer in self.fine_tuned.items()
                  if isinstance(layer, CompressedLayer)}
        return {path: state for path, state in states.items() if state is not None}

    def load_subspace_states(self, states: Dict[str, Dict[str, object]]) -> None:
        """Restore :meth:`subspace_states` (e.g. from a checkpoint) into the chosen layers; ValueError for
        a path that is not one of them."""
        unknown = sorted(set(states) - set(self.fine_tuned))
        if unknown:
            raise ValueError(f'subspace states for layers that are not fine-tuned here: {unknown}')
        for path, state in states.items():
            self.fine_tuned[path].load_subspace_state(state)

    def budget_costs(self, model: nn.Module, run_batch: Callable[[object], object],
                     batches: Iterable) -> Dict[str, List[Cost]]:
        """The cost table of ``memory_budget_mib`` (:func:`~mmseg_actcomp.ops.budget.calibration_costs`)
        over ``budget_batches`` of ``batches``, in training mode with the frozen BNs on running statistics;
        ``model`` (after :meth:`apply`) is left as it was.

        Args:
            run_batch: ``run_batch(batch)`` runs a training forward and backward of ``model`` on one batch.
        """
        with unchanged(model):
            model.train()
            self.set_norms_eval()
            return calibration_costs(self.fine_tuned, run_batch, batches, self.budget_batches)

    def choose_budget(self, costs: Dict[str, List[Cost]]) -> Dict[str, float]:
        """Choose each layer's ``explained_variance`` from ``costs`` (:meth:`budget_costs`, e.g. averaged
        over ranks) within ``memory_budget_mib`` and set it (:meth:`load_budget_choice`); keep the table.

        Raises:
            BudgetInfeasibleError: (a ``ValueError``) the budget is below the layers' cheapest kept bytes.
        """
        budget_bytes = self.memory_budget_mib * MIB
        choice = choose_explained_variance(costs, budget_bytes)
        self.load_budget_choice(choice)
        self.budget_table = (f'memory_budget_mib={self.memory_budget_mib:g}: explained_variance per layer, '
                             f'chosen on {self.budget_batches} training batches\n'
                             + budget_table(costs, choice, budget_bytes))
        return choice

    def fit_budget(self, model: nn.Module, run_batch: Callable[[object], object],
                   batches: Iterable) -> Dict[str, float]:
        """:meth:`budget_costs`, then :meth:`choose_budget`: path -> the chosen ``explained_variance``."""
        return self.choose_budget(self.budget_costs(model, run_batch, batches))

    def load_budget_choice(self, choice: Dict[str, float]) -> None:
        """Set the chosen layers' ``explained_variance`` to ``choice`` (path -> eps, e.g. from a checkpoint)
        and keep it as ``budget_choice``; ValueError for a path that is not one of them."""
        unknown = sorted(set(choice) - set(self.fine_tuned))
        if unknown:
            raise ValueError(f'explained_variance chosen for layers that are not fine-tuned here: {unknown}')
        for path, eps in choice.items():
            self.fine_tuned[path].explained_variance = eps
        self.budget_choice = dict(choice)

    def set_norms_eval(self) -> None:
        """Put frozen BNs (and, with ``freeze_region_norm_stats``, the region's BNs) back in
        running-statistics mode: ``model.train()`` switches them to batch statistics."""
        for norm in self.eval_norms:
            norm.eval()

    def stats(self) -> Optional[Dict[str, float]]:
        """The last step's compression figures of the chosen layers (see
        :func:`~mmseg_actcomp.ops.convert.compression_stats`), or None before the first."""
        return compression_stats(self.fine_tuned)

    def summary(self, model: nn.Module) -> str:
        """A line of the options and the trainable parameter count, then two tables: the chosen layers
        (path, type, shape of weight, trainable parameters of its weight and bias, and their
        ``explained_variance``, or ``patch_size`` for ``'gradfilt'``) and the region's BNs and LayerNorms
        (path, the statistics they normalise with, what they keep for backward)."""
        setting = 'patch_size' if self.method == 'gradfilt' else 'explained_variance'
        rows = [('#', 'layer', 'type', 'weight', 'trainable params', setting)]
        for i, path in enumerate(self.layer_paths, 1):
            layer = self.fine_tuned[path]
            value = getattr(layer, setting) if isinstance(layer, (CompressedLayer, GradFilterConv2d)) else None
            rows.append((str(i), path, type(layer).__name__, 'x'.join(map(str, layer.weight.shape)),
                         str(sum(t.numel() for t in (layer.weight, layer.bias) if t is not None and t.requires_grad)),
                         '-' if value is None else f'{value:g}'))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        head = (f'method={self.method}, {setting}={getattr(self, setting)}, '
                f'{len(self.layer_paths)} layers, lean_region={self.lean_region}, '
                f'freeze_region_norm_stats={self.freeze_region_norm_stats}, '
                f'precise_norm_batches={self.precise_norm_batches}, '
                f'norm_input_bits={self.norm_input_bits}, gelu_bits={self.gelu_bits}, center={self.center}, '
                f'truncate_batch={self.truncate_batch}, subspace={self.subspace}, '
                f'memory_budget_mib={self.memory_budget_mib}; '
                f'{trainable}/{total} parameters trainable')
        norms = [('region norm', 'statistics', 'keeps for backward')]
        for path, norm in model.named_modules():
            if isinstance(norm, (LeanBatchNorm2d, LeanLayerNorm)):
                norms.append((path, *self._norm_behaviour(norm)))
        text = head + '\n' + align(rows[0], rows[1:], left=len(rows[0]))
        if len(norms) > 1:
            text += '\n\n' + align(norms[0], norms[1:], left=len(norms[0]))
        return text

    def _norm_behaviour(self, norm: nn.Module) -> Tuple[str, str]:
        """(statistics, what it keeps) of a region BN or LayerNorm during training, for :meth:`summary`."""
        if isinstance(norm, LeanLayerNorm):
            if norm.input_bits is None:
                return 'per token', 'its input whole (exact input and affine gradients)'
            return 'per token', (f'x_hat in {norm.input_bits} bits per element and rstd per token (approximate '
                                 'gradients)')
        if norm not in self.eval_norms:
            if norm.input_bits is None:
                return 'batch', 'its input whole (exact input and affine gradients)'
            return 'batch', f'its input in {norm.input_bits} bits per element (approximate gradients)'
        statistics = ('running, re-estimated over '
                      f'{self.precise_norm_batches} batches at the start' if norm in self.region_norms
                      and self.precise_norm_batches else 'running')
        if norm.weight is not None and norm.weight.requires_grad:
            if norm.method == 'none':
                return statistics, 'x_hat whole for the gamma gradient'
            return statistics, f'x_hat for the gamma gradient, {norm.method} eps {norm.explained_variance}'
        return statistics, 'nothing'


def validate_key_bits(key: str, bits: Optional[int], kept: str) -> None:
    """ValueError naming ``key`` and the value unless ``bits`` is None or one of
    :data:`~mmseg_actcomp.compression.QUANTIZATION_BITS`; ``kept`` says what None keeps whole."""
    if bits is None:
        return
    try:
        validate_bits(bits)
    except ValueError:
        raise ValueError(f'{key}={bits!r} must be one of {list(QUANTIZATION_BITS)}, or None to keep {kept} '
                         'whole') from None


def validate_budget(method: str, memory_budget_mib: Optional[float], budget_batches: int) -> None:
    """ValueError naming the value unless ``memory_budget_mib`` is None or a number > 0 (with method
    ``'svd'``/``'hosvd'``: only they have a threshold to choose) and ``budget_batches`` an integer >= 1."""
    if memory_budget_mib is not None:
        if isinstance(memory_budget_mib, bool) or not isinstance(memory_budget_mib, (int, float)) \
                or not math.isfinite(memory_budget_mib) or memory_budget_mib <= 0:
            raise ValueError(f'memory_budget_mib={memory_budget_mib!r} must be a number of MiB > 0, or None for '
                             'no budget')
        if method not in METHODS:
            raise ValueError(f'memory_budget_mib={memory_budget_mib!r} chooses explained_variance per layer: it '
                             f"needs method='svd' or 'hosvd', not {method!r}")
    require_integer('budget_batches', budget_batches, 1)


def trace_inference_layers(model: nn.Module) -> List[str]:
    """Conv, linear layer and attention projection paths of an mmseg segmentor in the order its inference
    forward runs them (:func:`~mmseg_actcomp.ops.convert.trace_layer_order`), traced without grad on a zero
    image of the preprocessor's size capped at 128x128 (the order does not depend on the size; a 512x512
    trace of UPerNet costs seconds on a CPU).

    ``mode='tensor'`` first; ``mode='predict'`` where mmseg's tensor mode does not run (PointRend's
    cascade), and the preprocessor's full size where 128x128 is too small (LRASPP's 49x49 pooling).
    """
    full = tuple(getattr(getattr(model, 'data_preprocessor', None), 'size', None) or (128, 128))
    capped = tuple(min(s, 128) for s in full)
    attempts = [(capped, 'tensor'), (capped, 'predict')]
    if full != capped:
        attempts += [(full, 'tensor'), (full, 'predict')]
    param = next(model.parameters())
    errors = []
    for size, mode in attempts:
        image = torch.zeros(1, 3, *size, device=param.device, dtype=param.dtype)
        try:
            return _traced(model, lambda: model(image, None, mode=mode))
        except (RuntimeError, TypeError, ValueError, IndexError) as e:
            errors.append(f"mode='{mode}' at {size[0]}x{size[1]}: {type(e).__name__}: {e}")
    raise ValueError(f'cannot trace the {CHOSEN_KINDS} of the inference forward to choose '
                     'num_layers (give layers=[...] instead): ' + '; '.join(errors))


def _traced(model: nn.Module, run_forward: Callable[[], object]) -> List[str]:
    """:func:`~mmseg_actcomp.ops.convert.trace_layer_order` of ``run_forward`` in eval mode without grad,
    the training flags restored after."""
    with preserved_training_modes(model), torch.no_grad():
        model.eval()
        return trace_layer_order(model, run_forward)


def trainable_inference_layers(model: nn.Module, run_forward: Optional[Callable[[], object]] = None) -> List[str]:
    """What ``num_layers`` counts back from: the convs, linear layers and attention projections of the
    inference forward, less those the model freezes itself (EMANet's bases). Its length is the
    ``num_layers`` that fine-tunes them all. Sees an ``nn.MultiheadAttention``'s projections once
    :func:`~mmseg_actcomp.ops.attention.expose_attention_projections` made them layers
    (:meth:`FineTuneRegion.choose` does).

    Args:
        model: an mmseg segmentor, traced by :func:`trace_inference_layers`; or any ``nn.Module`` with
            ``run_forward``.
        run_forward: ``run_forward()`` runs ``model``'s inference forward on an example input (traced in
            eval mode without grad).
    """
    order = trace_inference_layers(model) if run_forward is None else _traced(model, run_forward)
    return [p for p in order if model.get_submodule(p).weight.requires_grad]


def convmodule_norms(model: nn.Module, paths: Sequence[str]) -> List[nn.Module]:
    """The norm layers of the mmcv ``ConvModule``s whose ``conv`` is at one of ``paths``."""
    from mmcv.cnn import ConvModule  # the one mmcv type the region knows: a conv's own norm trains with it
    norms = []
    for path in paths:
        parent_name, _, leaf = path.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, ConvModule) and leaf == 'conv' and parent.with_norm:
            norms.append(parent.norm)
    return norms
