"""``nn.Linear`` drop-ins that keep a compressed copy of their input for backward: the MLPs and projections
of transformer backbones and heads (SegFormer, ViT, Swin: ``(B, N, C)`` tokens; ConvNeXt- or
PoolFormer-style channel-last MLPs: ``(B, H, W, C)``; classifiers: ``(B, C)``).

:class:`SVDLinear` and :class:`HOSVDLinear` are registered in mmengine's root ``MODELS`` registry, as the
compressed convolutions are. Gradient Filter has no linear layer here: its patches are spatial, for
convolutions.
"""
from typing import Optional, Tuple

from torch import Tensor, nn

from ..compression import Tucker
from .compressed import CompressedLayer, register_layers
from .functional import autocast_layer_args, compressed_linear, linear_weight_from_tucker


class LinearCompression(CompressedLayer):
    """What a compressed layer computing ``F.linear(x, weight, bias)`` on a channel-last input adds to
    :class:`~mmseg_actcomp.ops.CompressedLayer`: its input layout, weight gradient and compressing forward.
    The base of :class:`CompressedLinear` (an ``nn.Linear``) and of
    :class:`~mmseg_actcomp.ops.attention.CompressedProjection` (an attention's query, key or value
    projection, whose ``weight`` and ``bias`` are rows of its attention's Parameters); listed before the
    layer type, whose ``forward`` runs when nothing is compressed."""
    channel_mode = -1

    def prepare_input(self, x: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor], tuple]:
        """``(x, weight, bias, ())`` cast as autocast casts a linear layer's arguments."""
        return (*autocast_layer_args(x, self.weight, self.bias), ())

    def weight_gradient(self, tucker: Tucker, grad_output: Tensor, args: tuple = ()) -> Tensor:
        """:func:`~mmseg_actcomp.ops.functional.linear_weight_from_tucker` of ``tucker: (..., C)`` and
        ``grad_output: (..., O)``."""
        return linear_weight_from_tucker(tucker, grad_output)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(..., C)``: ``(B, C)``, ``(B, N, C)``, ``(B, H, W, C)``, or unbatched ``(C,)``; returns
        ``(..., O)``."""
        if not self._compresses(x):
            return super().forward(x)
        if x.dim() == 1:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        x, weight, bias, _ = self.prepare_input(x)
        return compressed_linear(x, weight, bias, self.keep(x))


class CompressedLinear(LinearCompression, nn.Linear):
    """``nn.Linear`` that, while training, keeps a truncated decomposition of its input for backward.

    Subclasses choose the decomposition with the class attribute ``method`` (a key of
    ``mmseg_actcomp.compression.METHODS``). Parameters and state-dict keys are those of ``nn.Linear``.

    The input ``x: (..., C)`` is decomposed as it comes, a tensor whose first mode is the batch and whose
    last is the channel mode, the modes between (tokens ``N``, or ``H`` and ``W``) kept as they are:
    HOSVD truncates the channel and those modes, and the batch mode only with ``truncate_batch``
    (:func:`~mmseg_actcomp.compression.truncated_modes` of its number of modes); SVD truncates the batch
    mode of its ``(B, rest)`` unfolding. ``center`` keeps the mean over every mode but the channel one.

    Compression happens only when the weight gradient is wanted: in training mode, with grad enabled and
    ``weight.requires_grad``. Otherwise the layer is exactly ``nn.Linear.forward``, which with a frozen
    weight whose input still needs a gradient keeps only the weight already (its input gradient needs
    nothing else). Input and bias gradients are always exact; the weight gradient is that of the
    reconstruction (:func:`~mmseg_actcomp.ops.functional.linear_weight_from_tucker`). Under autocast the
    input, weight and bias are cast as autocast casts a linear layer's, and the factors are kept in that
    dtype.

    Non-finite inputs raise :class:`~mmseg_actcomp.compression.NonFiniteActivationError` naming
    ``layer_name``; where no eigen-solver converges the layer keeps its input whole for that step and warns
    once; where the decomposition would be no smaller than the input, the input is kept (as
    :class:`~mmseg_actcomp.ops.CompressedConv2d` does, see it for the options).

    Attributes set by each compressing forward (None before the first): ``last_ranks`` (``(k,)`` for SVD,
    one rank per mode for HOSVD, e.g. ``(r_B, r_N, r_C)``; a mode kept whole: its size),
    ``last_input_shape`` (e.g. ``(B, N, C)``), ``last_kept_bytes``, ``last_vanilla_bytes`` (the input's
    bytes: what ``nn.Linear`` keeps), ``last_kept_energy`` and ``last_kept_whole``, as for
    :class:`~mmseg_actcomp.ops.CompressedConv2d`.

    Args:
        Those of ``nn.Linear``, then ``explained_variance``, ``center``, ``subspace`` (``'warm'`` and
        ``'frozen'`` carry over the bases of every mode but the batch one: tokens and channels),
        ``subspace_batches`` and ``truncate_batch``, as :class:`~mmseg_actcomp.ops.CompressedConv2d`'s.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 explained_variance: float = 0.8, center: bool = True, subspace: str = 'exact',
                 subspace_batches: int = 8, truncate_batch: bool = True) -> None:
        self._init_compression(explained_variance, center, subspace, subspace_batches, truncate_batch)
        super().__init__(in_features, out_features, bias, device, dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, explained_variance: float = 0.8, center: bool = True,
                    subspace: str = 'exact', subspace_batches: int = 8,
                    truncate_batch: bool = True) -> 'CompressedLinear':
        """A layer with ``linear``'s sizes and training flag sharing its Parameter objects
        (``new.weight is linear.weight``), so optimizers and checkpoints see the same tensors."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f'from_linear expects an nn.Linear, got {type(linear).__name__}')
        # Built on the meta device: its own parameters are replaced right away, so allocate none.
        twin = cls(linear.in_features, linear.out_features, linear.bias is not None, device='meta',
                   dtype=linear.weight.dtype, explained_variance=explained_variance, center=center,
                   subspace=subspace, subspace_batches=subspace_batches, truncate_batch=truncate_batch)
        twin.weight = linear.weight
        twin.bias = linear.bias
        return twin.train(linear.training)

    def extra_repr(self) -> str:
        return super().extra_repr() + self.compression_repr()


class SVDLinear(CompressedLinear):
    """:class:`CompressedLinear` keeping a truncated SVD of the ``(B, rest)`` batch unfolding of its input
    ``(B, ..., C)``: ``U: (B, k)`` and ``Sigma V^T: (k, ..., C)``."""
    method = 'svd'


class HOSVDLinear(CompressedLinear):
    """:class:`CompressedLinear` keeping a truncated HOSVD (Tucker) of its input ``(B, ..., C)``: core
    ``(r_1, ..., r_C)`` and factors ``U_n: (I_n, r_n)`` (the batch mode kept whole with ``truncate_batch=False``)."""
    method = 'hosvd'


register_layers(SVDLinear, HOSVDLinear)
