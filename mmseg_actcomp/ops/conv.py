"""``nn.Conv2d`` drop-ins that keep a compressed copy of their input for backward.

:class:`SVDConv2d` and :class:`HOSVDConv2d` are registered in mmengine's root ``MODELS`` registry, which
mmcv's ``build_conv_layer`` searches from any scope, so ``conv_cfg=dict(type='HOSVDConv2d',
explained_variance=0.8)`` works in mmseg configs.
"""
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..compression import (METHODS, DecompositionError, SubspaceEstimate, Tucker, compress, multi_mode_product,
                           truncated_modes, validate_explained_variance)
from ..utils.validate import require_integer
from .functional import autocast_conv_args, compressed_conv2d
from .lean.frozen_conv import conv_twin, explicit_padding, frozen_weight_conv2d


class CompressedConv2d(nn.Conv2d):
    """``nn.Conv2d`` that, while training, keeps a truncated decomposition of its input for backward.

    Subclasses choose the decomposition with the class attribute ``method`` (a key of
    ``mmseg_actcomp.compression.METHODS``). Parameters and state-dict keys are those of ``nn.Conv2d``.

    Compression happens only when the weight gradient is wanted: in training mode, with grad enabled and
    ``weight.requires_grad``. Otherwise nothing of the input needs keeping: in eval mode or under
    ``torch.no_grad()`` the layer is exactly ``nn.Conv2d.forward``; with a frozen weight whose input still
    needs a gradient it keeps only the weight (as :class:`~mmseg_actcomp.ops.LeanConv2d`).
    Input and bias gradients are always exact; the weight gradient is that of the reconstruction.

    Padding: numeric symmetric zero padding is passed to the convolution, so the unpadded input is
    compressed. String padding (``'same'``, ``'valid'``), asymmetric ``'same'`` and non-zero padding modes
    pad explicitly with ``F.pad`` first (as ``nn.Conv2d`` does for non-zero modes) and the padded input is
    compressed. Under autocast the input, weight and bias are cast as autocast would cast them for a
    convolution, and the factors are stored in that dtype.

    Non-finite inputs: an input holding NaN or Inf raises
    :class:`mmseg_actcomp.compression.NonFiniteActivationError` naming ``layer_name`` (no fallback to
    storing the input: its ranks are undefined and the divergence should surface where it happens).
    Solver failures: where no eigen-solver converges on one of the input's Gram matrices (after the
    float64 and SVD fallbacks, :class:`~mmseg_actcomp.compression.DecompositionError`), the layer keeps its
    input whole for that step, as ``nn.Conv2d`` does, and warns once naming ``layer_name``: training goes on.

    Attributes set by each compressing forward (None before the first):
        last_ranks: ``(k,)`` for SVD, ``(r1, r2, r3, r4)`` for HOSVD (a mode kept whole: its size).
        last_input_shape: ``(B, C, H, W)`` of the compressed input (padded, if padded explicitly).
        last_kept_bytes: bytes of the stored core and factors, or of the input where the decomposition
            would be no smaller (ranks full on a small input): the input is then kept, as ``nn.Conv2d``
            keeps it, and the weight gradient is exact.
        last_vanilla_bytes: ``B*C*H*W`` times the element size: what ``nn.Conv2d`` would keep.
        last_kept_energy: ``||x_hat||^2 / ||x||^2`` (0-dim tensor): the part of the input's energy the
            weight gradient sees.
        last_kept_whole: whether the input itself was kept (no smaller decomposition, or no solver
            converged).

    Args:
        Those of ``nn.Conv2d``, then
        explained_variance: ``eps`` in ``(0, 1]``; every truncated mode keeps the fewest singular
            components that explain this fraction of its energy. ``1`` keeps all (exact).
        center: keep the input's per-channel mean exactly and decompose the rest (see
            :func:`mmseg_actcomp.compression.compress`); ranks then follow the variation around the mean.
            Defaults to True; False is the paper's decomposition of the raw input.
        subspace: ``'exact'`` decomposes every step's input; ``'warm'`` (HOSVD only) starts each channel
            and spatial mode from the last step's basis for it (one subspace iteration instead of a Gram
            and its eigendecomposition, :func:`~mmseg_actcomp.compression.warm_leading_vectors`), the
            ranks still chosen so that every step meets ``explained_variance``, and decomposes exactly
            every ``subspace_batches``-th step and whenever a mode's size changes; ``'frozen'`` (HOSVD
            only) sums the channel and spatial modes' Gram matrices over the first ``subspace_batches``
            compressing steps (decomposed exactly meanwhile), takes the bases explaining
            ``explained_variance`` of them, and from then on only projects onto those bases; a mode whose
            size changes is decomposed exactly for that step. The batch mode (new samples every step)
            stays exact in both.
        subspace_batches: ``M >= 1``: ``'frozen'``'s estimation batches, ``'warm'``'s refresh period.
        truncate_batch: truncate the batch mode as well (HOSVD): True is the paper's decomposition and these
            layers' default; False keeps the batch mode whole, every sample keeping its own coordinates in
            the truncated channel and spatial bases (see
            :func:`~mmseg_actcomp.compression.truncated_modes`; the hook's default). SVD truncates only the
            batch mode, so it needs True.

    Other attributes:
        layer_name: names the layer in errors; the class name unless whoever builds or swaps layers in
            sets it (e.g. to the module's path in the model).
        runs_plain: while True the layer is exactly ``nn.Conv2d`` (keeps its input whole, records nothing,
            adds nothing to a ``'frozen'`` estimate): :func:`~mmseg_actcomp.ops.budget.plain_convs` sets it
            for the calibration pass of a memory budget, which needs the exact weight gradient.
    """
    method: str = ''

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = 'zeros',
                 device=None, dtype=None, explained_variance: float = 0.8, center: bool = True,
                 subspace: str = 'exact', subspace_batches: int = 8, truncate_batch: bool = True) -> None:
        if self.method not in METHODS:
            raise TypeError(f'{type(self).__name__}.method must be one of {sorted(METHODS)}, '
                            f'got {self.method!r}; use SVDConv2d or HOSVDConv2d')
        validate_subspace(self.method, subspace, subspace_batches)
        if not isinstance(truncate_batch, bool):
            raise ValueError(f'truncate_batch={truncate_batch!r} must be True or False')
        #: the modes the decomposition truncates (ranks are reported for all of the method's modes)
        self.modes = truncated_modes(self.method, truncate_batch)
        self.truncate_batch = truncate_batch
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
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

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, explained_variance: float = 0.8, center: bool = True,
                  subspace: str = 'exact', subspace_batches: int = 8,
                  truncate_batch: bool = True) -> 'CompressedConv2d':
        """A layer with ``conv``'s hyper-parameters and training flag sharing its Parameter objects
        (``new.weight is conv.weight``), so optimizers and checkpoints see the same tensors."""
        return conv_twin(cls, conv, explained_variance=explained_variance, center=center, subspace=subspace,
                         subspace_batches=subspace_batches, truncate_batch=truncate_batch)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, explained_variance={self.explained_variance}, center={self.center}'
                + (f', subspace={self.subspace!r}' if self.subspace != 'exact' else '')
                + ('' if self.truncate_batch else ', truncate_batch=False'))

    def _compresses(self, x: Tensor) -> bool:
        """Whether this forward needs the weight gradient, hence a kept copy of ``x``."""
        return (not self.runs_plain and self.training and torch.is_grad_enabled() and self.weight.requires_grad
                and x.numel() > 0)

    def prepare_input(self, x: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor], Tuple[int, int]]:
        """``(x, weight, bias, padding)`` as a compressing forward convolves and decomposes them: cast as
        autocast casts a convolution's arguments, ``x: (B, C, H, W)`` padded as far as the convolution
        cannot do it (:func:`~mmseg_actcomp.ops.lean.frozen_conv.explicit_padding`) and the numeric zero
        padding left for it."""
        x, weight, bias = autocast_conv_args(x, self.weight, self.bias)
        x, padding = explicit_padding(self, x)
        return x, weight, bias, padding

    def decompose(self, x: Tensor, explained_variance: float,
                  warm: Optional[Dict[int, Tensor]] = None) -> Tucker:
        """The decomposition a compressing forward takes of its prepared input ``x: (B, C, H, W)``
        (:meth:`prepare_input`) at ``explained_variance``: this method's modes, ``center``, the frozen bases
        where estimated, ``'warm'``'s start bases ``warm`` (mode -> ``(I_n, r)``) where given. No side
        effect; :func:`no_smaller` says whether the layer keeps ``x`` instead.

        Raises:
            DecompositionError: no eigen-solver converged (the layer then keeps ``x`` whole).
        """
        return compress(x, explained_variance, self.modes, name=self.layer_name, center=self.center,
                        fixed=self._fixed_bases(x), warm=warm)

    def _warn_solver_failure(self, error: DecompositionError) -> None:
        if not self._warned_solver_failure:
            warnings.warn(f'{self.layer_name}: {error}; keeping its input uncompressed for the steps where '
                          'this happens (warned once)', RuntimeWarning, stacklevel=3)
            self._warned_solver_failure = True

    def _record(self, tucker: Tucker, x: Tensor) -> None:
        # one rank per mode of the method, a mode kept whole counting its size: (k,) SVD, (r1, ..) HOSVD
        self.last_ranks = tuple(tucker.core.shape[n] for n in METHODS[self.method])
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

    def _fixed_bases(self, x: Tensor) -> Optional[Dict[int, Tensor]]:
        """The frozen bases that fit ``x``'s modes (``'frozen'``, once estimated), else None."""
        return _fitting(self.frozen_bases, x)

    def _warm_start(self, x: Tensor) -> Optional[Dict[int, Tensor]]:
        """``'warm'``: the last step's bases that fit ``x``'s modes, or None on a refresh step."""
        if self.subspace != 'warm' or self.warm_steps >= self.subspace_batches:
            return None
        return _fitting(self.warm_bases, x)

    def _keep_warm(self, tucker: Tucker, warm: Optional[Dict[int, Tensor]]) -> None:
        """``'warm'``: keep this step's channel and spatial factors for the next step."""
        if self.subspace == 'warm':
            self.warm_bases = {n: tucker.factors[n].detach() for n in SUBSPACE_MODES}
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
            self._estimate = SubspaceEstimate(SUBSPACE_MODES, self.center)
        self._estimate.add(x)
        if self._estimate.batches >= self.subspace_batches:
            self.frozen_bases = self._estimate.bases(self.explained_variance)
            self._estimate = None

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(B, C, H, W)`` or unbatched ``(C, H, W)``; returns ``(B, O, H', W')`` (resp. unbatched)."""
        if not self._compresses(x):
            if self.weight.requires_grad or not torch.is_grad_enabled():
                return super().forward(x)
            return frozen_weight_conv2d(self, x)
        if x.dim() == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        x, weight, bias, padding = self.prepare_input(x)
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
            # Ranks (nearly) full on a small input, or no solver converged: keep the input, as a plain
            # conv does (never more than that), and the weight gradient is exact.
            tucker = whole
            self.last_kept_bytes, self.last_kept_energy = tucker.nbytes, x.new_ones((), dtype=torch.float32)
        return compressed_conv2d(x, weight, bias, tucker, self.stride, padding, self.dilation,
                                 self.groups)


def _fitting(bases: Optional[Dict[int, Tensor]], x: Tensor) -> Optional[Dict[int, Tensor]]:
    """The entries ``mode -> (I_n, r)`` of ``bases`` whose size fits mode ``n`` of ``x``, on ``x``'s device;
    None if there are none (or no ``bases``): a mode whose size changed is decomposed exactly."""
    if bases is None:
        return None
    return {n: u.to(x.device) for n, u in bases.items() if u.shape[0] == x.shape[n]} or None


def no_smaller(tucker: Tucker, x: Tensor) -> bool:
    """Whether ``tucker`` takes at least the bytes of ``x: (B, C, H, W)`` itself: a compressed layer then
    keeps ``x`` whole, as ``nn.Conv2d`` does (never more than that)."""
    return tucker.nbytes >= x.numel() * x.element_size()


#: the subspaces ``'warm'`` carries over and ``'frozen'`` fixes: channel and spatial (the batch mode sees new
#: samples every step)
SUBSPACE_MODES = (1, 2, 3)
SUBSPACES = ('exact', 'warm', 'frozen')
#: why a method other than HOSVD has no subspace to carry over or fix
NO_SUBSPACE = {'svd': 'truncates only the batch mode, whose samples change every step',
               'gradfilt': 'keeps patch sums of its input, no decomposition'}


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


class SVDConv2d(CompressedConv2d):
    """:class:`CompressedConv2d` keeping a truncated SVD of the ``(B, C*H*W)`` batch unfolding of its
    input: ``U: (B, k)`` and ``Sigma V^T: (k, C, H, W)``, i.e. ``k * (B + C*H*W)`` elements."""
    method = 'svd'


class HOSVDConv2d(CompressedConv2d):
    """:class:`CompressedConv2d` keeping a truncated HOSVD (Tucker) of its input: core
    ``(r1, r2, r3, r4)`` and factors ``U_n: (I_n, r_n)``, i.e. ``r1*r2*r3*r4 + sum_n I_n * r_n`` elements."""
    method = 'hosvd'


def register_layers(*layers: type) -> None:
    """Register ``layers`` under their class names in mmengine's root ``MODELS`` registry: mmcv's
    ``build_conv_layer`` switches to the current default scope's registry (mmseg's, a child of the root)
    and falls back to parents, so both scopes find these names."""
    from mmengine.registry import MODELS
    for layer in layers:
        MODELS.register_module(layer.__name__, module=layer, force=True)


register_layers(SVDConv2d, HOSVDConv2d)
