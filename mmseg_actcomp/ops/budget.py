r"""A memory budget for the fine-tuned layers (convolutions and linear layers): one explained-variance
threshold per layer.

Which ``eps`` a layer gets decides both what it keeps for backward and how far its weight gradient is from
the exact one. Given a budget of bytes for the kept factors of all chosen layers, the thresholds are
chosen from :data:`EXPLAINED_VARIANCE_GRID` on a few calibration batches so that the summed weight-gradient
error ``sum_l ||dW_l(eps_l) - dW_l||_F`` (the ASI paper's criterion) is smallest while the summed kept bytes
fit the budget: a multiple-choice knapsack, solved exactly by :func:`choose_explained_variance`.

The costs come from a training forward and backward with the chosen layers running as stock ones
(:func:`plain_layers`), which gives every layer's exact input and output gradient
(:class:`LayerGradientRecorder`); :func:`explained_variance_costs` then decomposes each input at every
``eps`` of the grid as the layer itself would (:meth:`~mmseg_actcomp.ops.CompressedLayer.decompose`) and
compares the weight gradient of the kept factors (the layer's
:meth:`~mmseg_actcomp.ops.CompressedLayer.weight_gradient`) with the exact one. :func:`calibration_costs`
runs it all and leaves the model as it found it.
"""
import contextlib
import itertools
import math
from functools import partial
from statistics import mean
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..compression import DecompositionError, Tucker
from ..utils.table import align
from .compressed import CompressedLayer, no_smaller
from .functional import autocast_layer_args
from .precise_bn import preserved_rng, preserved_training_modes

#: the thresholds a budget chooses from, per layer
EXPLAINED_VARIANCE_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: the knapsack counts bytes in units of ``budget / BUDGET_UNITS`` (rounded up per layer: never over)
BUDGET_UNITS = 4096
MIB = 2 ** 20


class Cost(NamedTuple):
    """One layer at one threshold: what it keeps and how far its weight gradient is from the exact one."""
    explained_variance: float
    kept_bytes: int
    error: float  # ||dW(eps) - dW||_F


class BudgetInfeasibleError(ValueError):
    """The budget is below what the layers keep each at its cheapest threshold; the message says the
    minimum and what to do."""


@contextlib.contextmanager
def plain_layers(layers: Iterable[nn.Module]) -> Iterator[None]:
    """Run the :class:`~mmseg_actcomp.ops.CompressedLayer` among ``layers`` as the stock ``nn.Conv2d`` /
    ``nn.Linear`` inside the block (``runs_plain``): exact weight gradients, nothing recorded, no
    ``'frozen'`` estimate fed."""
    layers = [m for m in layers if isinstance(m, CompressedLayer)]
    for layer in layers:
        layer.runs_plain = True
    try:
        yield
    finally:
        for layer in layers:
            layer.runs_plain = False


class LayerGradientRecorder:
    """Context manager recording, for each layer of ``layers`` (path -> conv or linear layer), every call's
    input (``(B, C, H, W)``, or ``(..., C)``) as the layer computes with it (cast as autocast casts it) and
    the gradient of its output (``(B, O, H', W')``, or ``(..., O)``): ``calls[path]`` is a list of ``[x,
    grad_output]`` (the gradient None until backward reaches it). A hook on the output tensor, not on the
    module: an in-place op after the layer (mmcv's ReLU) would break a module backward hook."""

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        self._layers = dict(layers)
        self.calls: Dict[str, List[List[Tensor]]] = {path: [] for path in self._layers}
        self._handles: List = []

    def __enter__(self) -> 'LayerGradientRecorder':
        for path, layer in self._layers.items():
            self._handles.append(layer.register_forward_hook(partial(self._record, path)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, path: str, layer: nn.Module, inputs: Tuple[Tensor, ...], output: Tensor) -> None:
        x, _, _ = autocast_layer_args(inputs[0], layer.weight, layer.bias)
        call = [x.detach(), None]
        self.calls[path].append(call)
        if output.requires_grad:
            output.register_hook(partial(_store_gradient, call))

    def recorded(self, path: str) -> List[Tuple[Tensor, Tensor]]:
        """``(x, grad_output)`` of the calls of ``path`` that backward reached."""
        return [(x, grad) for x, grad in self.calls[path] if grad is not None]


def _store_gradient(call: List[Tensor], grad: Tensor) -> None:
    call[1] = grad.detach()


def _kept_factors(layer: CompressedLayer, x: Tensor, explained_variance: float) -> Tucker:
    """What ``layer`` keeps of its prepared input ``x`` at ``explained_variance``: its decomposition, or
    ``x`` whole where that is no smaller or no solver converged (as its forward does)."""
    whole = Tucker(x, (None,) * x.dim())
    try:
        tucker = layer.decompose(x, explained_variance)
    except DecompositionError:
        return whole
    return whole if no_smaller(tucker, x) else tucker


@torch.no_grad()
def explained_variance_costs(layer: CompressedLayer, x: Tensor, grad_output: Tensor,
                             grid: Sequence[float] = EXPLAINED_VARIANCE_GRID) -> List[Cost]:
    """For each ``eps`` of ``grid``: the bytes ``layer`` keeps of ``x`` at ``eps`` (its ``last_kept_bytes``
    after a compressing forward on ``x``) and ``||dW(eps) - dW||_F``, the weight gradient of the kept factors
    against the exact one, both with ``grad_output`` (float32 arithmetic for the exact one).

    Args:
        layer: a compressed conv or linear layer (its method, ``center`` and, for a conv, stride, padding,
            dilation and groups apply).
        x: its input (``(B, C, H, W)``, or ``(..., C)``), in the dtype it computes with (e.g. cast by autocast).
        grad_output: the gradient of its output (``(B, O, H', W')``, or ``(..., O)``).
        grid: thresholds in ``(0, 1]``.

    Returns:
        One :class:`Cost` per threshold, in ``grid`` order.
    """
    x, _, _, args = layer.prepare_input(x)
    exact = layer.weight_gradient(Tucker(x.float(), (None,) * x.dim()), grad_output.float(), args)
    costs = []
    for eps in grid:
        tucker = _kept_factors(layer, x, eps)
        approx = layer.weight_gradient(tucker, grad_output, args)
        costs.append(Cost(eps, tucker.nbytes, float((approx.float() - exact).norm())))
    return costs


def _summed_calls(per_call: Sequence[List[Cost]]) -> List[Cost]:
    """A layer called more than once in a pass keeps the sum of its calls' bytes; the sum of their errors
    bounds its error (triangle inequality)."""
    return [Cost(options[0].explained_variance, sum(c.kept_bytes for c in options), sum(c.error for c in options))
            for options in zip(*per_call)]


def _over_batches(per_batch: Sequence[List[Cost]]) -> List[Cost]:
    """Bytes: the largest over the batches (a budget holds for the worst one seen); error: the mean."""
    return [Cost(options[0].explained_variance, max(c.kept_bytes for c in options), mean(c.error for c in options))
            for options in zip(*per_batch)]


def calibration_costs(layers: Mapping[str, CompressedLayer], run_batch: Callable[[object], object],
                      batches: Iterable, num_batches: int,
                      grid: Sequence[float] = EXPLAINED_VARIANCE_GRID) -> Dict[str, List[Cost]]:
    """:func:`explained_variance_costs` of every layer of ``layers`` over ``num_batches`` batches.

    The training passes change the model (BN running statistics, ``.grad``, the random states): run this
    inside :func:`unchanged`, with the model in the mode to calibrate in (training mode, frozen BNs in eval).

    Args:
        layers: path -> compressed layer; they run as stock layers meanwhile (:func:`plain_layers`).
        run_batch: ``run_batch(batch)`` runs a training forward and backward of the model on one batch.
        batches: yields at least ``num_batches`` items.
        num_batches: ``>= 1``.
        grid: the thresholds to cost.

    Returns:
        path -> one :class:`Cost` per threshold: bytes the largest over the batches, error their mean.
        A layer that no backward reached is left out.

    Raises:
        ValueError: ``batches`` ran out first.
    """
    per_batch: Dict[str, List[List[Cost]]] = {path: [] for path in layers}
    seen = 0
    with plain_layers(layers.values()):
        for batch in itertools.islice(batches, num_batches):
            with LayerGradientRecorder(layers) as recorder:
                run_batch(batch)
            for path, layer in layers.items():
                calls = recorder.recorded(path)
                if calls:
                    per_batch[path].append(_summed_calls([explained_variance_costs(layer, x, g, grid)
                                                          for x, g in calls]))
            seen += 1
    if seen < num_batches:
        raise ValueError(f'budget_batches={num_batches}: the calibration batches ran out after {seen}')
    return {path: _over_batches(costs) for path, costs in per_batch.items() if costs}


@contextlib.contextmanager
def unchanged(model: nn.Module) -> Iterator[None]:
    """Restore ``model``'s buffers, its parameters' ``.grad`` (None inside the block) and its modules'
    training flags on exit, and the global random states (:func:`~mmseg_actcomp.ops.precise_bn.preserved_rng`):
    a training pass inside (calibration) leaves no trace on the model nor on the data that follows."""
    buffers = [(b, b.clone()) for b in model.buffers()]
    grads = [(p, p.grad) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    try:
        with preserved_rng(), preserved_training_modes(model):
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for p, grad in grads:
            p.grad = grad


def choose_explained_variance(costs: Mapping[str, Sequence[Cost]], budget_bytes: float) -> Dict[str, float]:
    """The threshold per layer minimising the summed error with the summed kept bytes within ``budget_bytes``.

    A multiple-choice knapsack solved exactly by dynamic programming over bytes counted in units of
    ``ceil(budget_bytes / BUDGET_UNITS)``, each option's bytes rounded up: the choice never exceeds the budget
    and is optimal for byte counts at that resolution (exact for budgets under ``BUDGET_UNITS`` bytes).

    Args:
        costs: layer path -> its options, :class:`Cost` or ``(eps, bytes, error)`` tuples.
        budget_bytes: ``>= 0`` (not necessarily whole: ``memory_budget_mib * 2**20``).

    Returns:
        path -> the chosen ``eps``, every path of ``costs``.

    Raises:
        BudgetInfeasibleError: every layer at its cheapest option still exceeds the budget.
    """
    costs = {path: [Cost(*option) for option in options] for path, options in costs.items()}
    cheapest = {path: min(options, key=lambda c: (c.kept_bytes, c.error)) for path, options in costs.items()}
    minimum = sum(c.kept_bytes for c in cheapest.values())
    if minimum > budget_bytes:
        raise BudgetInfeasibleError(infeasible_message(budget_bytes, minimum, len(costs)))
    unit = max(1, math.ceil(budget_bytes / BUDGET_UNITS))
    capacity = int(budget_bytes // unit)
    # least[c]: the least summed error of the layers so far within c units; picks[l][c]: layer l's option
    least = torch.zeros(capacity + 1, dtype=torch.float64)
    picks = []
    for options in costs.values():
        least, pick = _add_layer(least, options, unit)
        picks.append(pick)
    if not math.isfinite(least[capacity]):  # only the rounding up lost the fit: the cheapest set fits
        return {path: c.explained_variance for path, c in cheapest.items()}
    choice, units = {}, capacity
    for (path, options), pick in reversed(list(zip(costs.items(), picks))):
        option = options[int(pick[units])]
        choice[path] = option.explained_variance
        units -= _units(option, unit)
    return {path: choice[path] for path in costs}


def _units(option: Cost, unit: int) -> int:
    return math.ceil(option.kept_bytes / unit)


def _add_layer(least: Tensor, options: Sequence[Cost], unit: int) -> Tuple[Tensor, Tensor]:
    """One knapsack stage: ``least (capacity + 1,)`` -> the least error with this layer added, and the option
    index reaching it ``(capacity + 1,)`` (-1 where none fits)."""
    added = torch.full_like(least, math.inf)
    pick = torch.full(least.shape, -1, dtype=torch.long)
    for i, option in enumerate(options):
        units = _units(option, unit)
        if units >= least.numel():
            continue
        candidate = least[:least.numel() - units] + option.error
        better = candidate < added[units:]
        added[units:] = torch.where(better, candidate, added[units:])
        pick[units:][better] = i
    return added, pick


def infeasible_message(budget_bytes: float, minimum_bytes: int, num_layers: int) -> str:
    """What :class:`BudgetInfeasibleError` says: the budget, the minimum and what to do, in MiB."""
    minimum = f'{math.ceil(minimum_bytes / MIB * 1000) / 1000:.3f}'  # rounded up: a budget of it holds them
    return (f'memory_budget_mib={budget_bytes / MIB:g} cannot be met: the {num_layers} fine-tuned layers keep at '
            f'least {minimum} MiB on the calibration batches, each at its cheapest explained_variance; raise '
            f'memory_budget_mib to at least {minimum} or fine-tune fewer layers')


def budget_table(costs: Mapping[str, Sequence[Cost]], choice: Mapping[str, float], budget_bytes: float) -> str:
    """An aligned table of the choice: per layer its ``eps``, calibrated kept MiB and weight-gradient
    error, then the totals against the budget."""
    chosen = {path: next(c for c in costs[path] if c.explained_variance == eps) for path, eps in choice.items()}
    rows = [(path, f'{c.explained_variance:g}', f'{c.kept_bytes / MIB:.3f}', f'{c.error:.4g}')
            for path, c in chosen.items()]
    rows.append((f'total (budget {budget_bytes / MIB:g} MiB)', '',
                 f'{sum(c.kept_bytes for c in chosen.values()) / MIB:.3f}',
                 f'{sum(c.error for c in chosen.values()):.4g}'))
    return align(('layer', 'explained_variance', 'kept MiB (calibrated)', '||dW_eps - dW||_F'), rows, left=1)
