"""What every layer that keeps a truncated decomposition of its input for backward shares, whatever it
computes: :class:`CompressedLayer`, the base of :class:`~mmseg_actcomp.ops.CompressedConv2d` (``(B, C, H,
W)`` inputs) and :class:`~mmseg_actcomp.ops.CompressedLinear` (channel-last ``(..., C)`` inputs).

It holds the method, the threshold and the options (``center``, ``truncate_batch``, ``subspace``), decides
when to compress, decomposes (:func:`~mmseg_actcomp.compression.compress`), falls back to the input itself
(no smaller decomposition, no solver converged), records what was kept (``last_*``) and carries the
``'warm'``/``'frozen'`` subspaces over steps. A subclass says only how its input is laid out (its
``channel_mode``), how it prepares it (:meth:`CompressedLayer.prepare_input`) and how its backward takes
the weight gradient from a decomposition (:meth:`CompressedLayer.weight_gradient`).
"""
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..compression import (METHODS, DecompositionError, SubspaceEstimate, Tucker, compress, method_modes,
                           multi_mode_product, truncated_modes, validate_explained_variance)
from ..utils.validate import require_integer

#: the subspaces ``'warm'`` carries over and ``'frozen'`` fixes
SUBSPACES = ('exact', 'warm', 'frozen')
#: why a method other than HOSVD has no subspace to carry over or fix
NO_SUBSPACE = {'svd': 'truncates only the batch mode, whose samples change every step',
               'gradfilt': 'keeps patch sums of its input, no decomposition'}


def subspace_modes(ndim: int) -> Tuple[int, ...]:
    """The modes whose bases ``'warm'`` carries over and ``'frozen'`` fixes, of an ``ndim``-mode input: every
    mode but the batch one (it sees new samples every step): channel and spatial, or tokens and channel."""
    return tuple(range(1, ndim))


#: :func:`subspace_modes` of a conv's ``(B, C, H, W)``: channel, height and width
SUBSPACE_MODES = subspace_modes(4)


def validate_subspace(method: str, subspace: str, subspace_batches: int) -> None:
    """ValueError naming the value unless ``subspace`` is one of :data:`SUBSPACES` (other than
    ``'exact'`` for HOSVD only: SVD truncates only the batch mode, the gradient filter decomposes nothing)
    and ``subspace_batches`` an integer >= 1."""
    if subspace not in SUBSPACES:
        raise ValueError(f'subspace={subspace!r} is not one of {list(SUBSPACES)}')
    if subspace != 'exact' and method != 'hosvd':
        why = NO_SUBSPACE.get(method, 'has no subspace')
        raise ValueError(f"subspace={subspace!r} needs method='hosvd' ({method!r} {why})")
    require_integer('subspace_batches', subspace_batches, 1)


def no_smaller(tucker: Tucker, x: Tensor) -> bool:
    """Whether ``tucker`` takes at least the bytes of ``x`` itself: a compressed layer then keeps ``x``
    whole, as the stock layer does (never more than that)."""
    return tucker.nbytes >= x.numel() * x.element_size()


def _fitting(bases: Optional[Dict[int, Tensor]], x: Tensor) -> Optional[Dict[int, Tensor]]:
    """The entries ``mode -> (I_n, r)`` of ``bases`` whose size fits mode ``n`` of ``x``, on ``x``'s device;
    None if there are none (or no ``bases``): a mode whose size changed is decomposed exactly."""
    if bases is None:
        return None
    return {n: u.to(x.device) for n, u in bases.items() if n < x.dim() and u.shape[0] == x.shape[n]} or None


class CompressedLayer:
    """Base (listed first) of a layer with a ``weight`` and ``bias`` that, while training, keeps a truncated
    decomposition of its input for backward. Subclasses choose the decomposition with the class attribute
    ``method`` (a key of ``mmseg_actcomp.compression.METHODS``) and say:

    * ``channel_mode``: the channel mode of the prepared input (1 for ``(B, C, H, W)``, -1 for channel-last);
    * :meth:`prepare_input`: the input, weight, bias and extra arguments a compressing forward runs with;
    * :meth:`weight_gradient`: the weight gradient their backward takes from a decomposition.

    Their ``__init__`` calls :meth:`_init_compression` with the options below (see
    :class:`~mmseg_actcomp.ops.CompressedConv2d` for what each does) and a compressing ``forward`` calls
    :meth:`keep` on its prepared input. The input's modes: the batch mode first, the decomposition's modes
    follow their number (:func:`~mmseg_actcomp.compression.truncated_modes`).
    """
    method: str = ''
    channel_mode: int = 1

    def _init_compression(self, explained_variance: float, center: bool, subspace: str, subspace_batches: int,
                          truncate_batch: bool) -> None:
        """Validate and set the options; every ``last_*`` record None. No Parameter is touched: callable
        before ``nn.Module.__init__``."""
        if self.method not in METHODS:
            subclasses = ' or '.join(sub.__name__ for sub in type(self).__subclasses__()) or 'a subclass'
            raise TypeError(f'{type(self).__name__}.method must be one of {sorted(METHODS)}, '
                            f'got {self.method!r}; use {subclasses}')
        validate_subspace(self.method, subspace, subspace_batches)
        if not isinstance(truncate_batch, bool):
            raise ValueError(f'truncate_batch={truncate_batch!r} must be True or False')
        truncated_modes(self.method, truncate_batch)  # SVD, whose one mode is the batch mode, needs True
        self.truncate_batch = truncate_batch
        self.explained_variance = explained_variance
        self.center = bool(center)
        self.layer_name = type(self).__name__
        self.runs_plain = False
        self.last_ranks: Optional[Tuple[int, ...]] = None
        self.last_input_shape: Optional[Tuple[int, ...]] = None
        self.last_kept_bytes: Optional[int] = None
        self.last_vanilla_bytes: Optional[int] = None
        self.last_kept_energy: Optional[Tensor] = None
        self.last_kept_whole: Optional[bool] = None
        self._warned_solver_failure = False
        self.subspace, self.subspace_batches = subspace, subspace_batches
        self.frozen_bases: Optional[Dict[int, Tensor]] = None  # 'frozen': mode -> basis, once estimated
        self._estimate: Optional[SubspaceEstimate] = None
        self.warm_bases: Optional[Dict[int, Tensor]] = None  # 'warm': mode -> the last step's basis
        self.warm_steps = 0  # 'warm': compressing steps since the last exact decomposition

    @property
    def explained_variance(self) -> float:
        return self._explained_variance

    @explained_variance.setter
    def explained_variance(self, value: float) -> None:
        self._explained_variance = validate_explained_variance(value)

    def modes_for(self, ndim: int) -> Tuple[int, ...]:
        """The modes the decomposition truncates of an ``ndim``-mode input (ranks are reported for all of
        the method's modes)."""
        return truncated_modes(self.method, self.truncate_batch, ndim)

    def compression_repr(self) -> str:
        """The options for ``extra_repr``, after the stock layer's own."""
        return (f', explained_variance={self.explained_variance}, center={self.center}'
                + (f', subspace={self.subspace!r}' if self.subspace != 'exact' else '')
                + ('' if self.truncate_batch else ', truncate_batch=False'))

    def _compresses(self, x: Tensor) -> bool:
        """Whether this forward needs the weight gradient, hence a kept copy of ``x``."""
        return (not self.runs_plain and self.training and torch.is_grad_enabled() and self.weight.requires_grad
                and x.numel() > 0)

    def prepare_input(self, x: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor], tuple]:
        """``(x, weight, bias, args)`` as a compressing forward computes with them and decomposes ``x``:
        cast as autocast casts the layer's arguments, and ``args`` the layer's own (e.g. a convolution's
        stride, padding, dilation, groups) that :meth:`weight_gradient` takes too."""
        raise NotImplementedError

    def weight_gradient(self, tucker: Tucker, grad_output: Tensor, args: tuple) -> Tensor:
        """The weight gradient the layer's backward computes from ``tucker``, a decomposition of its
        prepared input (:meth:`prepare_input`, whose ``args`` these are), and ``grad_output``: the exact one
        for ``Tucker(x, (None,) * x.dim())``."""
        raise NotImplementedError

    def decompose(self, x: Tensor, explained_variance: float,
                  warm: Optional[Dict[int, Tensor]] = None) -> Tucker:
        """The decomposition a compressing forward takes of its prepared input ``x`` (:meth:`prepare_input`)
        at ``explained_variance``: this method's modes of ``x``, ``center`` along ``channel_mode``, the
        frozen bases where estimated, ``'warm'``'s start bases ``warm`` (mode -> ``(I_n, r)``) where given.
        No side effect; :func:`no_smaller` says whether the layer keeps ``x`` instead.

        Raises:
            DecompositionError: no eigen-solver converged (the layer then keeps ``x`` whole).
        """
        return compress(x, explained_variance, self.modes_for(x.dim()), name=self.layer_name, center=self.center,
                        fixed=_fitting(self.frozen_bases, x), warm=warm, channel_mode=self.channel_mode)

    def keep(self, x: Tensor) -> Tucker:
        """What a compressing forward keeps of its prepared input ``x`` for backward, recorded in the
        ``last_*`` attributes: its decomposition at ``explained_variance`` (feeding and using the
        ``'warm'``/``'frozen'`` subspaces), or ``x`` itself (a :class:`Tucker` without factors) where the
        decomposition would be no smaller or no solver converged (warned once, training goes on)."""
        whole = Tucker(x.detach(), (None,) * x.dim())
        try:
            warm = self._warm_start(x)
            tucker = self.decompose(x, self.explained_variance, warm)
            self._estimate_subspace(x)
            self._keep_warm(tucker, warm)
        except DecompositionError as e:
            self._warn_solver_failure(e)
            tucker = whole
        self._record(tucker, x)
        self.last_kept_whole = tucker is whole or no_smaller(tucker, x)
        if self.last_kept_whole:
            # Ranks (nearly) full on a small input, or no solver converged: keep the input, as the stock
            # layer does (never more than that), and the weight gradient is exact.
            tucker = whole
            self.last_kept_bytes, self.last_kept_energy = tucker.nbytes, x.new_ones((), dtype=torch.float32)
        return tucker

    def _warn_solver_failure(self, error: DecompositionError) -> None:
        if not self._warned_solver_failure:
            warnings.warn(f'{self.layer_name}: {error}; keeping its input uncompressed for the steps where '
                          'this happens (warned once)', RuntimeWarning, stacklevel=4)
            self._warned_solver_failure = True

    def _record(self, tucker: Tucker, x: Tensor) -> None:
        # one rank per mode of the method, a mode kept whole counting its size: (k,) SVD, (r1, ..) HOSVD
        self.last_ranks = tuple(tucker.core.shape[n] for n in method_modes(self.method, x.dim()))
        self.last_input_shape = tuple(x.shape)
        self.last_kept_bytes = tucker.nbytes
        self.last_vanilla_bytes = x.numel() * x.element_size()
        # ||x_hat||^2 / ||x||^2: the fraction of the input's energy the weight gradient sees, from the
        # core and the factors' small Gram matrices (the identity unless centred). A 0-dim tensor, read
        # only when logged, so that no step waits for a device sync.
        with torch.no_grad():
            core = tucker.core.detach().float()
            grams = {n: u.float().mT @ u.float() for n, u in enumerate(tucker.factors) if u is not None}
            kept = (core * multi_mode_product(core, grams)).sum()
            self.last_kept_energy = kept / x.detach().float().square().sum().clamp(min=1e-30)

    def _warm_start(self, x: Tensor) -> Optional[Dict[int, Tensor]]:
        """``'warm'``: the last step's bases that fit ``x``'s modes, or None on a refresh step."""
        if self.subspace != 'warm' or self.warm_steps >= self.subspace_batches:
            return None
        return _fitting(self.warm_bases, x)

    def _keep_warm(self, tucker: Tucker, warm: Optional[Dict[int, Tensor]]) -> None:
        """``'warm'``: keep this step's factors of every mode but the batch one for the next step."""
        if self.subspace == 'warm':
            self.warm_bases = {n: tucker.factors[n].detach() for n in subspace_modes(tucker.core.dim())}
            self.warm_steps = 1 if warm is None else self.warm_steps + 1

    def subspace_state(self) -> Optional[Dict[str, object]]:
        """What a resumed run needs to continue as this one would: ``'frozen'``'s bases once estimated,
        ``'warm'``'s last bases and steps since the last exact step; None when there is none yet."""
        if self.subspace == 'frozen' and self.frozen_bases is not None:
            return {'bases': dict(self.frozen_bases)}
        if self.subspace == 'warm' and self.warm_bases is not None:
            return {'bases': dict(self.warm_bases), 'steps': self.warm_steps}
        return None

    def load_subspace_state(self, state: Dict[str, object]) -> None:
        """Inverse of :meth:`subspace_state`."""
        bases = {int(n): u for n, u in state['bases'].items()}
        if self.subspace == 'frozen':
            self.frozen_bases, self._estimate = bases, None
        elif self.subspace == 'warm':
            self.warm_bases, self.warm_steps = bases, int(state['steps'])
        else:
            raise ValueError(f"{self.layer_name}: a subspace state for a layer with subspace='exact'")

    def _estimate_subspace(self, x: Tensor) -> None:
        """``'frozen'``: add ``x`` to the estimate until ``subspace_batches`` inputs are in, then freeze."""
        if self.subspace != 'frozen' or self.frozen_bases is not None:
            return
        if self._estimate is None:
            self._estimate = SubspaceEstimate(subspace_modes(x.dim()), self.center, self.channel_mode)
        self._estimate.add(x)
        if self._estimate.batches >= self.subspace_batches:
            self.frozen_bases = self._estimate.bases(self.explained_variance)
            self._estimate = None


def register_layers(*layers: type) -> None:
    """Register ``layers`` under their class names in mmengine's root ``MODELS`` registry: mmcv's
    ``build_conv_layer`` switches to the current default scope's registry (mmseg's, a child of the root)
    and falls back to parents, so both scopes find these names."""
    from mmengine.registry import MODELS
    for layer in layers:
        MODELS.register_module(layer.__name__, module=layer, force=True)
