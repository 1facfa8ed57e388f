"""``nn.Conv2d`` drop-ins that keep a compressed copy of their input for backward.

:class:`SVDConv2d` and :class:`HOSVDConv2d` are registered in mmengine's root ``MODELS`` registry, which
mmcv's ``build_conv_layer`` searches from any scope, so ``conv_cfg=dict(type='HOSVDConv2d',
explained_variance=0.8)`` works in mmseg configs.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..compression import Tucker
from .compressed import CompressedLayer, register_layers
from .functional import CHANNEL_MODE, autocast_layer_args, compressed_conv2d, conv2d_weight_from_tucker
from .lean.frozen_conv import conv_twin, explicit_padding, frozen_weight_conv2d


class CompressedConv2d(CompressedLayer, nn.Conv2d):
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
            adds nothing to a ``'frozen'`` estimate): :func:`~mmseg_actcomp.ops.budget.plain_layers` sets it
            for the calibration pass of a memory budget, which needs the exact weight gradient.

    What it shares with :class:`~mmseg_actcomp.ops.CompressedLinear` (the options, when to compress, the
    fallbacks, the records, the subspaces) is :class:`~mmseg_actcomp.ops.compressed.CompressedLayer`'s.
    """
    channel_mode = CHANNEL_MODE

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = 'zeros',
                 device=None, dtype=None, explained_variance: float = 0.8, center: bool = True,
                 subspace: str = 'exact', subspace_batches: int = 8, truncate_batch: bool = True) -> None:
        self._init_compression(explained_variance, center, subspace, subspace_batches, truncate_batch)
        #: the modes the decomposition truncates of a (B, C, H, W) input
        self.modes = self.modes_for(4)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, explained_variance: float = 0.8, center: bool = True,
                  subspace: str = 'exact', subspace_batches: int = 8,
                  truncate_batch: bool = True) -> 'CompressedConv2d':
        """A layer with ``conv``'s hyper-parameters and training flag sharing its Parameter objects
        (``new.weight is conv.weight``), so optimizers and checkpoints see the same tensors."""
        return conv_twin(cls, conv, explained_variance=explained_variance, center=center, subspace=subspace,
                         subspace_batches=subspace_batches, truncate_batch=truncate_batch)

    def extra_repr(self) -> str:
        return super().extra_repr() + self.compression_repr()

    def prepare_input(self, x: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor], tuple]:
        """``(x, weight, bias, (stride, padding, dilation, groups))`` as a compressing forward convolves and
        decomposes them: cast as autocast casts a convolution's arguments, ``x: (B, C, H, W)`` padded as far
        as the convolution cannot do it (:func:`~mmseg_actcomp.ops.lean.frozen_conv.explicit_padding`) and
        the numeric zero padding left for it."""
        x, weight, bias = autocast_layer_args(x, self.weight, self.bias)
        x, padding = explicit_padding(self, x)
        return x, weight, bias, (self.stride, padding, self.dilation, self.groups)

    def weight_gradient(self, tucker: Tucker, grad_output: Tensor, args: tuple) -> Tensor:
        """:func:`~mmseg_actcomp.ops.conv2d_weight_from_tucker` of ``tucker: (B, C, H, W)`` and
        ``grad_output: (B, O, H', W')`` with the convolution's ``args`` (:meth:`prepare_input`)."""
        return conv2d_weight_from_tucker(tucker, self.weight.shape, grad_output, *args)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(B, C, H, W)`` or unbatched ``(C, H, W)``; returns ``(B, O, H', W')`` (resp. unbatched)."""
        if not self._compresses(x):
            if self.weight.requires_grad or not torch.is_grad_enabled():
                return super().forward(x)
            return frozen_weight_conv2d(self, x)
        if x.dim() == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        x, weight, bias, args = self.prepare_input(x)
        return compressed_conv2d(x, weight, bias, self.keep(x), *args)


class SVDConv2d(CompressedConv2d):
    """:class:`CompressedConv2d` keeping a truncated SVD of the ``(B, C*H*W)`` batch unfolding of its
    input: ``U: (B, k)`` and ``Sigma V^T: (k, C, H, W)``, i.e. ``k * (B + C*H*W)`` elements."""
    method = 'svd'


class HOSVDConv2d(CompressedConv2d):
    """:class:`CompressedConv2d` keeping a truncated HOSVD (Tucker) of its input: core
    ``(r1, r2, r3, r4)`` and factors ``U_n: (I_n, r_n)``, i.e. ``r1*r2*r3*r4 + sum_n I_n * r_n`` elements."""
    method = 'hosvd'


register_layers(SVDConv2d, HOSVDConv2d)
