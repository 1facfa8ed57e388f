"""Record every tensor autograd saves for backward, which module saved it and which backward node keeps it.

Three pieces of information are joined per saved tensor:

* the bytes and identity of its **storage** (several saved tensors can be views of one storage, e.g. the
  ASPP branches all read the same input: memory is counted per storage, once);
* the **innermost module running** its forward when it was saved (a stack kept by forward pre/post
  hooks on the model's modules), so ``F.relu`` called inside a block's ``forward`` belongs to that block;
* the **backward node** (``grad_fn``) that keeps it, e.g. ``ConvolutionBackward0``. A pack hook does not
  know its node, so the pack hook returns ``(index, tensor)``; after the forward the graph is walked from
  the loss and each node's saved fields are read, which calls the unpack hook with that index.

Parameter and buffer storages (a convolution saves its weight, batch norm its running statistics) are
flagged, since they are not activation memory.
"""
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Set, Tuple

import torch
from torch import Tensor, nn

StorageKey = Tuple[str, int]


@dataclass
class SavedTensor:
    """One tensor saved for backward (one pack-hook call).

    Attributes:
        index: order of saving in the forward pass.
        storage: key of the storage it lives on (device, address), shared by views of one storage.
        nbytes: bytes of that whole storage.
        module: path of the innermost model module running its forward when it was saved (``''`` for
            the root), None when none was running.
        op: name of the backward node keeping it (``grad_fn.name()``), None if no node reachable from the
            loss keeps it (its part of the graph was discarded).
        is_parameter: whether the storage is one of the model's parameters or buffers.
    """
    index: int
    storage: StorageKey
    nbytes: int
    module: Optional[str]
    op: Optional[str] = None
    is_parameter: bool = False


def storage_of(t: Tensor) -> Tuple[StorageKey, int]:
    """Key and byte size of the memory ``t`` (any shape, dtype, device) keeps alive.

    Strided tensors: their untyped storage, whole (a view keeps all of it). Tensors without a storage
    (sparse, meta, or other wrappers) get a key of their own and ``numel * element_size`` (values and
    indices for sparse COO); meta tensors count 0 bytes since they allocate nothing.
    """
    if t.device.type == 'meta':
        return ('meta', id(t)), 0
    try:
        storage = t.untyped_storage()
        return (str(t.device), storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        pass
    if t.layout == torch.sparse_coo:
        parts = (t._values(), t._indices())
        return ('tensor', id(t)), sum(p.numel() * p.element_size() for p in parts)
    return ('tensor', id(t)), t.numel() * t.element_size()


def parameter_storages(model: nn.Module) -> Set[StorageKey]:
    """Storage keys of every parameter and buffer of ``model``."""
    tensors = list(model.parameters()) + list(model.buffers())
    return {storage_of(t)[0] for t in tensors}


class ModuleStack:
    """Innermost module of ``model`` running its forward, kept by forward pre/post hooks on all modules.

    Use as a context manager; the hooks are removed on exit (also after an exception).
    """

    def __init__(self, model: nn.Module) -> None:
        self._paths = {}
        for path, module in model.named_modules():
            self._paths.setdefault(module, path)
        self._stack: List[str] = []
        self._handles = []

    @property
    def current(self) -> Optional[str]:
        """Path of the innermost running module, None when none runs."""
        return self._stack[-1] if self._stack else None

    def _push(self, module, args) -> None:
        self._stack.append(self._paths[module])

    def _pop(self, module, args, output) -> None:
        # always_call: also runs when forward raised, so the stack stays balanced.
        if self._stack:
            self._stack.pop()

    def __enter__(self) -> 'ModuleStack':
        for module in self._paths:
            self._handles.append(module.register_forward_pre_hook(self._push))
            self._handles.append(module.register_forward_hook(self._pop, always_call=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stack.clear()


class SavedTensorRecorder:
    """Context manager recording each tensor saved for backward in a forward pass of ``model``.

    Tensors pass through unchanged (the pack hook keeps the tensor itself), so memory and numerics are
    those of the unhooked run. Usage::

        with SavedTensorRecorder(model) as recorder:
            loss = model(x).sum()
        records = recorder.finish(loss)   # walks the graph for op names; call before backward
        loss.backward()

    Args:
        model: the module whose submodules attribute the saves; its parameters and buffers are flagged.
    """

    def __init__(self, model: nn.Module) -> None:
        self._modules = ModuleStack(model)
        self._parameters = parameter_storages(model)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self.records: List[SavedTensor] = []
        # Strong references until the graph walk: a freed storage's address could be reused by a later
        # save and two storages would then share one key.
        self._alive: List[Tensor] = []
        self._unpacked: Optional[List[int]] = None

    def _pack(self, t: Tensor):
        index = len(self.records)
        key, nbytes = storage_of(t)
        self.records.append(SavedTensor(index, key, nbytes, self._modules.current,
                                        is_parameter=key in self._parameters))
        self._alive.append(t)
        return index, t

    def _unpack(self, packed) -> Tensor:
        index, t = packed
        # Only the graph walk listens; backward unpacks too, after the recorder is done.
        if self._unpacked is not None:
            self._unpacked.append(index)
        return t

    def __enter__(self) -> 'SavedTensorRecorder':
        self._modules.__enter__()
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._modules.__exit__(*exc)

    def finish(self, *roots: Tensor) -> List[SavedTensor]:
        """Name the backward node of each record by walking the graph from ``roots`` (e.g. the loss),
        drop the recorder's own references, and return the records. Call before backward."""
        for node in _graph_nodes(root.grad_fn for root in roots):
            for index in self._saved_indices(node):
                self.records[index].op = node.name()
        self._alive.clear()
        return self.records

    def _saved_indices(self, node) -> List[int]:
        """Record indices of the tensors ``node`` keeps, read through the unpack hook."""
        self._unpacked = []
        # A custom autograd.Function's node is its ctx: its saves are ``saved_tensors``.
        names = [name for name in dir(node) if name.startswith('_saved_')] + ['saved_tensors']
        try:
            for name in names:
                try:
                    getattr(node, name, None)
                except RuntimeError:  # a field already freed: nothing of it is kept
                    pass
            return self._unpacked
        finally:
            self._unpacked = None


def _graph_nodes(roots: Iterable) -> Iterable:
    """Every backward node reachable from ``roots`` (grad_fns, None allowed), each once."""
    seen: Dict[object, None] = {}
    stack = [node for node in roots if node is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen[node] = None
        yield node
        stack.extend(child for child, _ in node.next_functions if child is not None)
