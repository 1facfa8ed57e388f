"""Per-layer figures of the fine-tuned convolutions and linear layers: input shape, ranks, vanilla and kept
bytes.

These give the paper's *estimate*: what each chosen layer keeps of its input for the weight gradient
(HOSVD/SVD factors, or the gradient filter's patch sums), read from the layer itself rather than from the
autograd graph.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from ..ops.convert import KEEPING_TYPES


@dataclass
class LayerStep:
    """What one chosen layer kept in one forward pass (calls of a shared module summed).

    Attributes:
        path: module path in the model.
        type: class name, e.g. ``'HOSVDConv2d'``, ``'GradFilterConv2d'``, ``'Conv2d'``, ``'HOSVDLinear'`` or
            ``'Linear'``.
        input_shape: ``(B, C, H, W)`` of its (first) input; a linear layer's ``(..., C)``, e.g. ``(B, N, C)``.
        ranks: ``(k,)`` (SVD) or one rank per mode of the input (HOSVD: ``(r1, r2, r3, r4)`` for a conv) of
            its (first) compressing call; None for a layer that keeps no decomposition (plain ``nn.Conv2d``
            or ``nn.Linear``, the gradient filter).
        vanilla_bytes: the input's elements times their size: what the stock layer keeps of its input.
        kept_bytes: bytes of the compressed factors (of the patch sums for the gradient filter); for a
            plain layer its vanilla bytes.
        calls: forward calls in the pass.
    """
    path: str
    type: str
    input_shape: Tuple[int, ...]
    ranks: Optional[Tuple[int, ...]]
    vanilla_bytes: int
    kept_bytes: int
    calls: int = 1


def _tensor_bytes(x: Tensor) -> int:
    return x.numel() * x.element_size()


def _observe(module: nn.Module, x: Tensor, path: str) -> LayerStep:
    """The :class:`LayerStep` of one call of ``module`` on ``x`` (``(B, C, H, W)``, or ``(..., C)`` for a
    linear layer), read after its forward."""
    kind = type(module).__name__
    if isinstance(module, KEEPING_TYPES) and module.last_kept_bytes is not None:
        ranks = getattr(module, 'last_ranks', None)
        return LayerStep(path, kind, tuple(module.last_input_shape), None if ranks is None else tuple(ranks),
                         int(module.last_vanilla_bytes), int(module.last_kept_bytes))
    vanilla = _tensor_bytes(x)
    return LayerStep(path, kind, tuple(x.shape), None, vanilla, vanilla)


def _merge(first: LayerStep, later: LayerStep) -> LayerStep:
    first.vanilla_bytes += later.vanilla_bytes
    first.kept_bytes += later.kept_bytes
    first.calls += 1
    return first


class LayerProbe:
    """Context manager observing the chosen layers of ``model`` during one forward pass.

    On exit, ``steps`` maps each path in ``layer_paths`` to its :class:`LayerStep` (missing if the layer
    did not run). Compressed layers report their ``last_*`` attributes, which the probe clears before each
    call so that a call that did not compress is not reported with an earlier call's figures.

    Raises:
        KeyError: a path that is not a submodule of ``model``.
    """

    def __init__(self, model: nn.Module, layer_paths: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        missing = [p for p in layer_paths if p not in modules]
        if missing:
            raise KeyError(f'layers not found in the model: {missing}')
        self._layers = {p: modules[p] for p in layer_paths}
        self.steps: Dict[str, LayerStep] = {}
        self._handles: List = []

    def __enter__(self) -> 'LayerProbe':
        for path, module in self._layers.items():
            self._handles.append(module.register_forward_pre_hook(self._before))
            self._handles.append(module.register_forward_hook(self._recorder(path)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @staticmethod
    def _before(module: nn.Module, args) -> None:
        if isinstance(module, KEEPING_TYPES):
            module.last_kept_bytes = None

    def _recorder(self, path: str):
        def record(module: nn.Module, args, output) -> None:
            step = _observe(module, args[0], path)
            previous = self.steps.get(path)
            self.steps[path] = step if previous is None else _merge(previous, step)
        return record
