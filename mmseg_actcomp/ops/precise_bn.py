"""Population statistics for BatchNorms that are about to run on their running statistics.

A BN switched from batch to running statistics for fine-tuning (so that it keeps nothing for backward,
:class:`~mmseg_actcomp.ops.LeanBatchNorm2d`) normalises with whatever its running statistics hold: an
exponential average over the pre-training task's last batches, which the fine-tuning data may not
match. Re-estimating them first as the plain average over ``K`` batches of the new data -- "precise BN"
(Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021; fvcore's ``update_bn_stats``, mmpretrain's
``PreciseBNHook``) -- gives the statistics the network will be evaluated with on the new task.
"""
import contextlib
import itertools
import random
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..utils.validate import require_integer


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's (CPU and CUDA) global random states on exit: work done
    inside (e.g. drawing extra augmented batches) leaves the data order and augmentation of what
    follows as if it had not run."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def preserved_training_modes(model: nn.Module) -> Iterator[None]:
    """Restore the ``training`` flag of every module of ``model`` on exit (``model.eval()`` or ``train()``
    inside switch them all)."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


@torch.no_grad()
def precise_norm_stats(model: nn.Module, norms: Sequence[_BatchNorm], batches: Iterable,
                       forward: Callable[[object], object], num_batches: int) -> int:
    """Replace the running statistics of ``norms`` by their averages over ``num_batches`` batches.

    Every BN of ``model`` not in ``norms`` runs on its running statistics meanwhile (unchanged), other
    modules in eval mode; ``norms`` run on batch statistics with a cumulative average (``momentum=None``),
    so that ``running_mean`` becomes the mean of the batch means and ``running_var`` the mean of the
    (unbiased) batch variances, as fvcore's ``update_bn_stats`` computes them. Modes, momenta and the
    global random states are restored afterwards.

    Args:
        model: the module ``forward`` runs.
        norms: BNs of ``model`` with ``track_running_stats``.
        batches: yields at least ``num_batches`` items.
        forward: ``forward(batch)`` runs ``model`` on one item of ``batches``.
        num_batches: ``K >= 1``.

    Returns:
        the number of batches averaged (``num_batches``).

    Raises:
        ValueError: ``num_batches < 1``, a BN without running statistics, or ``batches`` ran out first
            (the statistics are then left as they were).
    """
    require_integer('precise_norm_stats: num_batches', num_batches, 1)
    untracked = [type(n).__name__ for n in norms if not n.track_running_stats]
    if untracked:
        raise ValueError(f'precise_norm_stats: {untracked} keep no running statistics to re-estimate')
    saved = [(n.momentum, n.running_mean.clone(), n.running_var.clone(), n.num_batches_tracked.clone())
             for n in norms]
    seen = 0
    try:
        with preserved_rng(), preserved_training_modes(model):
            model.eval()
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None
                norm.train()
            for batch in itertools.islice(batches, num_batches):
                forward(batch)
                seen += 1
        if seen < num_batches:
            raise ValueError(f'precise_norm_stats: the batches ran out after {seen} of '
                             f'num_batches={num_batches}')
    except BaseException:
        for norm, (_, mean, var, count) in zip(norms, saved):
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.num_batches_tracked.copy_(count)
        raise
    finally:
        for norm, (momentum, *_) in zip(norms, saved):
            norm.momentum = momentum
    return seen
