"""Run real forward+backward steps and measure what they keep for backward (no optimizer step)."""
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from mmengine.utils import ProgressBar
from torch import Tensor, nn

from .layers import LayerProbe, LayerStep
from .region import region_modules, summarize_saved
from .saved import SavedTensorRecorder


@dataclass
class StepMemory:
    """Memory figures of one training step.

    Attributes:
        layers: :class:`~mmseg_actcomp.memory.layers.LayerStep` per chosen layer path.
        saved: :func:`~mmseg_actcomp.memory.region.summarize_saved` of the forward pass (bytes).
        peak_bytes: CUDA only: peak allocated bytes during the step above those allocated before it
            (the model at rest); None on other devices.
    """
    layers: Dict[str, LayerStep]
    saved: dict
    peak_bytes: Optional[int]


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == 'cuda'


def measure_step(model: nn.Module, compute_loss: Callable[[], Tensor], layer_paths: Sequence[str] = (),
                 device=None) -> StepMemory:
    """One forward+backward of ``model``, recording what autograd saves and what each chosen layer keeps.

    Gradients are set to None first; no optimizer step is taken.

    Args:
        model: module in the mode to measure (``train()`` for training memory); its submodules attribute
            the saves and its parameters/buffers are left out of the activation figures.
        compute_loss: runs the forward pass and returns a scalar loss ``()`` (e.g. ``model(x).sum()``).
        layer_paths: the fine-tuned layers; they and their parents form the region
            (:func:`~mmseg_actcomp.memory.region.region_modules`). Empty: no region, all is rest.
        device: when CUDA, the step's peak allocated memory is measured too.

    Returns:
        :class:`StepMemory`.
    """
    model.zero_grad(set_to_none=True)
    cuda = _is_cuda(device)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resting = torch.cuda.memory_allocated(device)
    with LayerProbe(model, layer_paths) as probe, SavedTensorRecorder(model) as recorder:
        loss = compute_loss()
    records = recorder.finish(loss)
    loss.backward()
    peak = None
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - resting
    del loss
    model.zero_grad(set_to_none=True)
    return StepMemory(probe.steps, summarize_saved(records, region_modules(layer_paths)), peak)


def measure_steps(model: nn.Module, batches: Iterable, loss_of_batch: Callable[[object], Tensor],
                  layer_paths: Sequence[str] = (), device=None,
                  progress: bool = True) -> List[StepMemory]:
    """:func:`measure_step` on each of ``batches`` (an iterable of the caller's batch objects), with a
    progress bar when ``progress`` and the length of ``batches`` is known.

    Args:
        loss_of_batch: ``batch -> loss ()``, running the forward pass of ``model`` on the batch.

    Returns:
        One :class:`StepMemory` per batch, in order.
    """
    bar = ProgressBar(len(batches)) if progress and hasattr(batches, '__len__') else None
    steps = []
    for batch in batches:
        steps.append(measure_step(model, lambda: loss_of_batch(batch), layer_paths, device))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.file.write('\n')
    return steps
