"""Run real forward+backward steps and measure what they keep for backward (no optimizer step)."""
import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from .layers import LayerProbe, LayerStep
from .region import region_modules, summarize_saved
from .saved import SavedTensorRecorder


@dataclass
class StepMemory:
    """Memory figures of one training step.

    Attributes:
        layers: :class:`~mmseg_actcomp.memory.layers.LayerStep` per chosen layer path.
        saved: :func:`~mmseg_actcomp.memory.region.summarize_saved` of the forward pass (bytes).
        peak_bytes: peak allocated bytes during the step above those allocated before it (the model at
            rest): the CUDA allocator's statistics on CUDA, the profiler's allocation records on CPU
            (:class:`CpuAllocationPeak`); None where neither is available.
    """
    layers: Dict[str, LayerStep]
    saved: dict
    peak_bytes: Optional[int]


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == 'cuda'


class CpuAllocationPeak:
    """Context manager: the peak of CPU memory allocated inside the block above what was allocated at its
    start, from torch's profiler (``profile_memory=True`` records every allocation and free, with its time).

    torch's CPU allocator keeps no statistics of its own; the profiler's records, summed in time order,
    give the allocated bytes at every moment of the block. ``peak_bytes`` is their running maximum (0 if
    nothing was allocated), set on exit; None if this torch's profiler does not expose the records.
    The profiler's own start/stop lines (kineto writes them to the process's stderr) are not shown.
    """

    def __init__(self) -> None:
        self.peak_bytes: Optional[int] = None
        self._profile = None

    def __enter__(self) -> 'CpuAllocationPeak':
        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _stderr_muted():
            self._profile.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        with _stderr_muted():
            self._profile.__exit__(*exc)
        if exc[0] is None:
            self.peak_bytes = _peak_of_allocations(self._profile)
        self._profile = None


@contextlib.contextmanager
def _stderr_muted():
    """File descriptor 2 pointed at the null device for the block (C++ logging bypasses sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_of_allocations(prof) -> Optional[int]:
    """Running maximum of the CPU allocation records' sizes (frees negative) in time order."""
    try:
        from torch._C._profiler import _EventType
        roots = prof.profiler.kineto_results.experimental_event_tree()
    except (AttributeError, ImportError, RuntimeError):
        return None
    records, stack = [], list(roots)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == 'cpu':
            records.append((node.start_time_ns, node.extra_fields.alloc_size))
    allocated = peak = 0
    for _, size in sorted(records):
        allocated += size
        peak = max(peak, allocated)
    return peak


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
        device: where the model runs (None: CPU); the step's peak allocated memory is measured on CUDA
            and on CPU.

    Returns:
        :class:`StepMemory`.
    """
    model.zero_grad(set_to_none=True)
    cuda = _is_cuda(device)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resting = torch.cuda.memory_allocated(device)
    with CpuAllocationPeak() if not cuda else contextlib.nullcontext() as cpu_peak:
        with LayerProbe(model, layer_paths) as probe, SavedTensorRecorder(model) as recorder:
            loss = compute_loss()
        records = recorder.finish(loss)
        loss.backward()
        del loss
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - resting
    else:
        peak = cpu_peak.peak_bytes
    model.zero_grad(set_to_none=True)
    return StepMemory(probe.steps, summarize_saved(records, region_modules(layer_paths)), peak)


def measure_steps(model: nn.Module, batches: Iterable, loss_of_batch: Callable[[object], Tensor],
                  layer_paths: Sequence[str] = (), device=None,
                  on_step: Optional[Callable[[StepMemory], None]] = None) -> List[StepMemory]:
    """:func:`measure_step` on each of ``batches`` (an iterable of the caller's batch objects).

    Args:
        loss_of_batch: ``batch -> loss ()``, running the forward pass of ``model`` on the batch.
        on_step: called with each step's :class:`StepMemory` as it is measured (e.g. a progress bar).

    Returns:
        One :class:`StepMemory` per batch, in order.
    """
    steps = []
    for batch in batches:
        steps.append(measure_step(model, lambda: loss_of_batch(batch), layer_paths, device))
        if on_step is not None:
            on_step(steps[-1])
    return steps
