"""``nn.MultiheadAttention`` whose query, key, value and output projections run as layers: the attention of
SegFormer's MiT, ViT, Segmenter and SETR (through mmcv's ``MultiheadAttention``) made choosable.

Stock ``nn.MultiheadAttention`` reads its projection weights directly (``in_proj_weight``, or
``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` when ``kdim``/``vdim`` differ, and ``out_proj.weight``
through ``F.multi_head_attention_forward``): no linear layer is ever called, so a forward trace never sees
them and they cannot be chosen. :class:`LeanMultiheadAttention` is the same module (a subclass, the same
Parameters under the same state-dict keys) computing the same outputs with them as layers:

* ``q_proj``, ``k_proj``, ``v_proj``: :class:`AttentionProjection`, ``F.linear`` with rows ``[0, E)``,
  ``[E, 2E)``, ``[2E, 3E)`` of ``in_proj_weight`` and ``in_proj_bias`` (or the whole ``q_proj_weight``...),
  read from the attention at every call. They hold no Parameter of their own, so the keys stay the stock
  ones and a checkpoint loads into a stock model and back; they are no ``nn.Linear`` either, so that weight
  initialisations looking for ``nn.Linear`` (MiT's ``init_weights`` runs after the hook's surgery) treat
  ``in_proj_weight`` as they treat the stock one.
* ``out_proj``: the stock ``nn.Linear``, now called.

:func:`expose_attention_projections` swaps it in for every ``nn.MultiheadAttention`` of a model (the
fine-tuned region does before tracing), and ``swap_layers`` swaps a chosen projection for
:class:`HOSVDProjection` / :class:`SVDProjection` (``out_proj`` for ``HOSVDLinear`` / ``SVDLinear``),
reading the same Parameters. A Parameter trains whole: the three projections reading rows of one
``in_proj_weight`` (or of one ``in_proj_bias``) are chosen together.

What the attention keeps for backward (``E = heads x d``; ``L`` queries, ``S`` keys, ``B`` samples; float32):

* with ``need_weights=True`` (what mmcv's wrapper asks for): the softmax output ``(B heads, L, S)``, the
  scaled query ``(B heads, L, d)``, the key and the value ``(B heads, S, d)``: ``4 (B heads L S + B L E +
  2 B S E)`` bytes, and dropout's mask and output when ``dropout > 0`` in training. Not compressed here;
* with ``need_weights=False``: what ``F.scaled_dot_product_attention`` keeps of views of the projections'
  outputs (stock calls it alike), the output projection's input being a view of its output;
* the projections: their inputs where their weights train (their decompositions when compressed), the
  output projection's input ``(B, L, E)`` likewise; nothing where frozen.

Never more than stock, which keeps the same softmax output, scaled query and (per role) key and value, but:
its self-attention (one query tensor) packs ``q, k, v`` into one ``(3, L, B, E)`` tensor whose key and
value views keep all of it alive (here ``2 L B E``: ``L B E`` less); and where projections train, its
``F.linear`` on the ``(L, B, E)`` views mmcv's wrapper passes keeps contiguous copies of them (here the
batch-first inputs are the block's own tensors, kept as they are). The heads are laid out by a
``reshape``, a transient copy kept in place of the projection's output, which is freed. Measured
(``tests/test_ops/test_attention.py``): a block with ``B=2, L=7, E=12``, 3 heads, frozen projections keeps
3,192 bytes for self-attention (stock 3,864) and the same as stock for cross-attention; SegFormer MiT-B0 on
two 64x64 images keeps 351,232 bytes in its 8 attentions with frozen projections (stock the same, softmax
outputs 31,744 bytes of it), 875,520 with every weight trained (stock 891,904; the whole model 9,762,048 against
10,016,000).

Compute: the unfused path always, also in inference (stock's fused ``torch._native_multi_head_attention``
is taken only for ``batch_first`` self-attention in inference without grad, which mmcv's wrapper never
passes: it transposes and calls with ``batch_first=False``); outputs equal stock's within float rounding.
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linear import LinearCompression

#: the input projections, in the order ``in_proj_weight`` stacks their rows
ROLES = ('q', 'k', 'v')


class AttentionProjection(nn.Module):
    """The query, key or value projection of a :class:`LeanMultiheadAttention`: ``F.linear(x, weight,
    bias)`` with ``weight: (E, E_in)`` and ``bias: (E,)`` read from its attention at every call: rows
    ``[i E, (i + 1) E)`` of ``in_proj_weight`` (or the whole ``q_proj_weight``, ``k_proj_weight`` or
    ``v_proj_weight`` when ``kdim``/``vdim`` differ) and of ``in_proj_bias``. Holds no Parameter: the
    attention owns them (its state-dict keys), :meth:`source_parameters` names them.

    Args:
        attention: the attention whose Parameters it reads (held, not registered: it is the parent).
        role: ``'q'``, ``'k'`` or ``'v'`` (:data:`ROLES`).
    """

    def __init__(self, attention: nn.MultiheadAttention, role: str) -> None:
        super().__init__()
        if role not in ROLES:
            raise ValueError(f'role={role!r} is not one of {list(ROLES)}')
        object.__setattr__(self, 'attention', attention)  # a plain reference: the parent is no submodule
        self.role = role
        index = ROLES.index(role)
        self.rows = slice(index * attention.embed_dim, (index + 1) * attention.embed_dim)
        self.in_features = {'q': attention.embed_dim, 'k': attention.kdim, 'v': attention.vdim}[role]
        self.out_features = attention.embed_dim

    @property
    def weight_name(self) -> str:
        """The attention's Parameter that :attr:`weight` is (rows of)."""
        return 'in_proj_weight' if self.attention._qkv_same_embed_dim else f'{self.role}_proj_weight'

    @property
    def weight(self) -> Tensor:
        """``(E, E_in)``: a view of the attention's Parameter."""
        weight = getattr(self.attention, self.weight_name)
        return weight[self.rows] if self.attention._qkv_same_embed_dim else weight

    @property
    def bias(self) -> Optional[Tensor]:
        """``(E,)``: rows of ``in_proj_bias``; None without bias."""
        bias = self.attention.in_proj_bias
        return None if bias is None else bias[self.rows]

    def source_parameters(self) -> List[nn.Parameter]:
        """The attention's Parameters that :attr:`weight` and :attr:`bias` read: what training this
        projection trains (whole)."""
        return [p for p in (getattr(self.attention, self.weight_name), self.attention.in_proj_bias)
                if p is not None]

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(..., E_in)``, batch first; returns ``(..., E)``."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        rows = f'[{self.rows.start}:{self.rows.stop}]' if self.attention._qkv_same_embed_dim else ''
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'weight={self.weight_name}{rows}, bias={self.bias is not None}')


class CompressedProjection(LinearCompression, AttentionProjection):
    """:class:`AttentionProjection` that, while training, keeps a truncated decomposition of its input
    ``(B, N, E_in)`` for backward, as :class:`~mmseg_actcomp.ops.CompressedLinear` does (see it for the
    options, records and fallbacks); the weight gradient flows into the rows of the attention's Parameter.
    Subclasses choose the decomposition with the class attribute ``method``."""

    def __init__(self, attention: nn.MultiheadAttention, role: str, explained_variance: float = 0.8,
                 center: bool = True, subspace: str = 'exact', subspace_batches: int = 8,
                 truncate_batch: bool = True) -> None:
        self._init_compression(explained_variance, center, subspace, subspace_batches, truncate_batch)
        super().__init__(attention, role)

    @classmethod
    def from_projection(cls, projection: AttentionProjection, explained_variance: float = 0.8,
                        center: bool = True, subspace: str = 'exact', subspace_batches: int = 8,
                        truncate_batch: bool = True) -> 'CompressedProjection':
        """A layer reading the same attention's rows as ``projection``, with its training flag."""
        if not isinstance(projection, AttentionProjection):
            raise TypeError(f'from_projection expects an AttentionProjection, got {type(projection).__name__}')
        twin = cls(projection.attention, projection.role, explained_variance=explained_variance, center=center,
                   subspace=subspace, subspace_batches=subspace_batches, truncate_batch=truncate_batch)
        return twin.train(projection.training)

    def extra_repr(self) -> str:
        return super().extra_repr() + self.compression_repr()


class SVDProjection(CompressedProjection):
    """:class:`CompressedProjection` keeping a truncated SVD of its input's ``(B, rest)`` batch unfolding."""
    method = 'svd'


class HOSVDProjection(CompressedProjection):
    """:class:`CompressedProjection` keeping a truncated HOSVD (Tucker) of its input ``(B, N, E_in)``."""
    method = 'hosvd'


class LeanMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose projections are layers (see the module docstring): ``q_proj``,
    ``k_proj``, ``v_proj`` (:class:`AttentionProjection`) and ``out_proj``, called in that order on
    batch-first ``(B, N, E)`` inputs. Its Parameters, state-dict keys, arguments and outputs are the stock
    module's: ``attn_output`` and ``attn_weights`` for ``batch_first`` either way, unbatched inputs, self-
    and cross-attention, ``kdim``/``vdim``, ``bias_k``/``bias_v``, ``add_zero_attn``, ``key_padding_mask`` and
    ``attn_mask`` (bool or float), ``need_weights``, ``average_attn_weights``, ``is_causal`` and ``dropout``
    (the same random draws as stock's, in the same order). The output of a module without ``batch_first``
    is contiguous, as stock's.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.q_proj, self.k_proj, self.v_proj = (AttentionProjection(self, role) for role in ROLES)

    @classmethod
    def from_module(cls, attention: nn.MultiheadAttention) -> 'LeanMultiheadAttention':
        """A module sharing ``attention``'s Parameters and ``out_proj`` (the very objects: optimizers and
        checkpoints see the same tensors), with its settings and training flag."""
        if type(attention) is not nn.MultiheadAttention:
            raise TypeError(f'from_module expects an nn.MultiheadAttention, got {type(attention).__name__}')
        # Built on the meta device: its own parameters are replaced right away, so allocate none.
        twin = cls(attention.embed_dim, attention.num_heads, dropout=attention.dropout,
                   bias=attention.in_proj_bias is not None, add_bias_kv=attention.bias_k is not None,
                   add_zero_attn=attention.add_zero_attn, kdim=attention.kdim, vdim=attention.vdim,
                   batch_first=attention.batch_first, device='meta', dtype=attention.out_proj.weight.dtype)
        for name, parameter in attention._parameters.items():
            setattr(twin, name, parameter)
        twin.out_proj = attention.out_proj
        return twin.train(attention.training)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """As ``nn.MultiheadAttention.forward``: query ``(B, L, E)`` with ``batch_first``, ``(L, B, E)``
        without, ``(L, E)`` unbatched; key and value ``(B, S, kdim)``, ``(B, S, vdim)`` likewise;
        ``key_padding_mask: (B, S)``, ``attn_mask: (L, S)`` or ``(B heads, L, S)``. Returns the output like
        the query and, with ``need_weights``, the weights ``(B, L, S)`` (``(B, heads, L, S)`` without
        ``average_attn_weights``), else None."""
        is_batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, self.num_heads)
        if not is_batched:
            query, key, value = (x.unsqueeze(0) for x in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        output, weights = self._attend(query, key, value, key_padding_mask, need_weights, attn_mask,
                                       average_attn_weights, is_causal)
        if not is_batched:
            return output.squeeze(0), None if weights is None else weights.squeeze(0)
        if not self.batch_first:
            output = output.transpose(0, 1).contiguous()
        return output, weights

    def _attend(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor],
                need_weights: bool, attn_mask: Optional[Tensor], average_attn_weights: bool,
                is_causal: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """``F.multi_head_attention_forward`` on batch-first ``query: (B, L, E)``, ``key: (B, S, kdim)``,
        ``value: (B, S, vdim)`` with the projections called as layers: the same masks, checks and
        arithmetic, step by step; the output ``(B, L, E)``."""
        batch, tgt_len, _ = query.shape
        if key.shape[:2] != value.shape[:2]:
            raise AssertionError(f"key's batch and sequence dims {tuple(key.shape[:2])} do not match value's "
                                 f'{tuple(value.shape[:2])}')
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name='key_padding_mask',
                                             other_type=F._none_or_dtype(attn_mask), other_name='attn_mask',
                                             target_type=query.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError('Need attn_mask if specifying the is_causal hint. You may use the Transformer '
                               'module method `generate_square_subsequent_mask` to create this mask.')
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # scaled_dot_product_attention's is_causal makes the mask
        else:
            attn_mask = F._canonical_mask(mask=attn_mask, mask_name='attn_mask', other_type=None, other_name='',
                                          target_type=query.dtype, check_other=False)
            if key_padding_mask is not None:
                is_causal = False
        heads, head_dim = self.num_heads, self.head_dim
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)  # (B, L, E), (B, S, E)
        if attn_mask is not None:
            attn_mask = _checked_attn_mask(attn_mask, batch * heads, tgt_len, key.shape[1])
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(batch, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, 1, -1)], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        q, k, v = (t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in (q, k, v))  # (B, heads, N, d) views
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(batch, heads, 1, head_dim)], dim=2)
            v = torch.cat([v, v.new_zeros(batch, heads, 1, head_dim)], dim=2)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        src_len = k.shape[2]
        if key_padding_mask is not None:
            F._check_key_padding_mask(key_padding_mask, src_len, batch)
            key_padding_mask = (key_padding_mask.view(batch, 1, 1, src_len).expand(-1, heads, -1, -1)
                                .reshape(batch * heads, 1, src_len))
            attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            # (B heads, N, d) as stock's products take them: the copies kept in place of the projections'
            # outputs, which are then freed
            q, k, v = (t.flatten(0, 1) for t in (q, k, v))
            q_scaled = q * math.sqrt(1.0 / float(head_dim))
            if attn_mask is not None:
                weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
            else:
                weights = torch.bmm(q_scaled, k.transpose(-2, -1))
            weights = F.softmax(weights, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            output = self.out_proj(_merge_heads(torch.bmm(weights, v).view(batch, heads, tgt_len, head_dim)))
            weights = weights.view(batch, heads, tgt_len, src_len)
            return output, weights.mean(dim=1) if average_attn_weights else weights
        if attn_mask is not None:
            if attn_mask.shape[0] == 1 and attn_mask.dim() == 3:
                attn_mask = attn_mask.unsqueeze(0)
            else:
                attn_mask = attn_mask.view(batch, heads, -1, src_len)
        # views of the projections' outputs: the output comes laid out as (B, L, heads, d), and the output
        # projection's input is a view of it
        output = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)  # (B, heads, L, d)
        return self.out_proj(_merge_heads(output)), None


def _checked_attn_mask(attn_mask: Tensor, batch_heads: int, tgt_len: int, src_len: int) -> Tensor:
    """``attn_mask: (L, S)`` as ``(1, L, S)``, or ``(B heads, L, S)`` as it is; RuntimeError (stock's) for
    another shape."""
    if attn_mask.dim() == 2:
        if attn_mask.shape != (tgt_len, src_len):
            raise RuntimeError(f'The shape of the 2D attn_mask is {attn_mask.shape}, but should be '
                               f'{(tgt_len, src_len)}.')
        return attn_mask.unsqueeze(0)
    if attn_mask.dim() == 3:
        if attn_mask.shape != (batch_heads, tgt_len, src_len):
            raise RuntimeError(f'The shape of the 3D attn_mask is {attn_mask.shape}, but should be '
                               f'{(batch_heads, tgt_len, src_len)}.')
        return attn_mask
    raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")


def _merge_heads(x: Tensor) -> Tensor:
    """``(B, heads, N, d)`` -> ``(B, N, E)``, head ``i`` in features ``[i d, (i + 1) d)``: a view where ``x``
    is laid out as ``(B, N, heads, d)``, else a copy."""
    return x.transpose(1, 2).flatten(2)


def expose_attention_projections(model: nn.Module) -> Dict[str, LeanMultiheadAttention]:
    """Replace, in place, every ``nn.MultiheadAttention`` inside ``model`` (that very type: a subclass may
    compute otherwise, and is left alone) by :meth:`LeanMultiheadAttention.from_module`: the same
    Parameters and state-dict keys, its projections now layers. Idempotent; a module registered under
    several paths gets one twin at all of them.

    Returns:
        path -> every :class:`LeanMultiheadAttention` now inside ``model``.

    Raises:
        ValueError: ``model`` itself is an ``nn.MultiheadAttention`` (it cannot replace itself).
    """
    if type(model) is nn.MultiheadAttention:
        raise ValueError('expose_attention_projections: the model is an nn.MultiheadAttention itself; use '
                         'LeanMultiheadAttention.from_module(model) instead')
    twins: Dict[int, LeanMultiheadAttention] = {}
    lean = {}
    for path, module in list(model.named_modules(remove_duplicate=False)):
        if type(module) is nn.MultiheadAttention:
            if id(module) not in twins:
                twins[id(module)] = LeanMultiheadAttention.from_module(module)
            model.set_submodule(path, twins[id(module)])
            lean[path] = twins[id(module)]
        elif isinstance(module, LeanMultiheadAttention):
            lean[path] = module
    return lean
