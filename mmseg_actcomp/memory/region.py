"""Split saved-tensor memory into the fine-tuned region and the rest, and break it down per backward op.

The attribution rule (also written into every report, see :data:`REGION_RULE`):

* ``region_modules`` = the chosen (fine-tuned) layers plus the **parent module** of each, e.g. for mmcv's
  ConvModule ``decode_head.bottleneck.conv`` the whole ``decode_head.bottleneck`` (its conv, norm and
  activation), for ResNet's ``backbone.layer4.0.conv1`` the whole block ``backbone.layer4.0`` (bn, relu,
  the residual add). The model root is never a parent here.
* A saved tensor belongs to the region when the innermost module running its forward when it was saved
  is, or is inside, one of ``region_modules`` (so ``F.relu`` called in a block's ``forward`` belongs to the
  block) and is not a loss module: a path component starting with ``loss`` (mmseg's heads compute their
  loss with ``loss_decode``), since the loss is no fine-tuned layer and is the same for every method.
  Functional ops of a head's own ``forward`` (concat, resize) run with the segmentor root innermost, since
  mmseg calls ``head.forward`` as a method from ``head.loss``: they are in the rest.
* Memory is counted per storage, once: a storage is in the region if any tensor on it was saved in the
  region, else in the rest. Parameter and buffer storages are left out of both.
"""
from collections import defaultdict
from typing import Collection, Dict, Iterable, List, Optional, Sequence

from ..ops.region import region_modules  # noqa: F401  (the rule's first half, re-exported)
from .saved import SavedTensor

REGION_RULE = ('fine-tuned region = tensors saved while the innermost running module is, or is inside, a '
               'chosen layer or the parent module of one (its ConvModule / residual block / head), loss '
               'modules (loss_*) excepted; each storage counted once, in the region if any of its saves '
               'is; parameters and buffers excluded')


def is_loss_path(path: str) -> bool:
    """Whether a component of module path ``path`` starts with ``loss`` (e.g. ``decode_head.loss_decode``)."""
    return any(part.startswith('loss') for part in path.split('.'))


def in_region(module: Optional[str], modules: Collection[str]) -> bool:
    """Whether module path ``module`` is one of ``modules`` or inside one, and no loss module."""
    if module is None or is_loss_path(module):
        return False
    return any(module == m or module.startswith(m + '.') for m in modules)


def _storage_groups(records: Iterable[SavedTensor]) -> Dict[tuple, List[SavedTensor]]:
    """Activation saves (parameters left out) that a node reachable from the loss keeps, per storage."""
    groups = defaultdict(list)
    for record in records:
        if not record.is_parameter and record.op is not None:
            groups[record.storage].append(record)
    return groups


def _per_op(groups: Dict[tuple, List[SavedTensor]]) -> Dict[str, dict]:
    """Per backward-op name: ``bytes`` of the storages it keeps (each once), ``exclusive_bytes`` of those
    only that op keeps (freed if that op kept nothing), ``saves``, the number of saved tensors, and
    ``module``, the module path whose saves for that op hold the most of its ``bytes`` (a storage counts for
    the module of the op's first save on it; ties: the first saved)."""
    table = defaultdict(lambda: {'bytes': 0, 'exclusive_bytes': 0, 'saves': 0})
    by_module = defaultdict(dict)  # op -> module -> bytes, in order of first save
    for saves in groups.values():
        ops = {record.op for record in saves}
        nbytes = saves[0].nbytes
        for op in ops:
            table[op]['bytes'] += nbytes
            table[op]['exclusive_bytes'] += nbytes if len(ops) == 1 else 0
            first = min((r for r in saves if r.op == op), key=lambda r: r.index)
            modules = by_module[op]
            modules[first.module] = modules.get(first.module, 0) + nbytes
        for record in saves:
            table[record.op]['saves'] += 1
    for op, modules in by_module.items():
        table[op]['module'] = max(modules, key=modules.get)
    return dict(sorted(table.items(), key=lambda item: -item[1]['bytes']))


def summarize_saved(records: Sequence[SavedTensor], modules: Sequence[str]) -> dict:
    """Byte totals of one forward pass's saves.

    Args:
        records: from :class:`~mmseg_actcomp.memory.saved.SavedTensorRecorder`, with ops named.
        modules: the region's module paths (:func:`region_modules`); empty for no fine-tuned region.

    Returns:
        ``{'total', 'region', 'rest', 'parameters', 'discarded'}`` in bytes (``total = region + rest``;
        ``parameters``: parameter/buffer storages saved, left out; ``discarded``: activation storages
        saved by graph parts the loss does not reach, freed before backward, left out) and ``per_op``:
        ``{'region': {op: {...}}, 'rest': {op: {...}}}`` (see :func:`_per_op`).
    """
    groups = _storage_groups(records)
    split = {'region': {}, 'rest': {}}
    for key, saves in groups.items():
        side = 'region' if any(in_region(r.module, modules) for r in saves) else 'rest'
        split[side][key] = saves
    region = sum(saves[0].nbytes for saves in split['region'].values())
    rest = sum(saves[0].nbytes for saves in split['rest'].values())
    return {
        'total': region + rest,
        'region': region,
        'rest': rest,
        'parameters': _unique_bytes(r for r in records if r.is_parameter),
        'discarded': _unique_bytes(r for r in records
                                   if not r.is_parameter and r.op is None and r.storage not in groups),
        'per_op': {side: _per_op(split[side]) for side in split},
    }


def _unique_bytes(records: Iterable[SavedTensor]) -> int:
    return sum({r.storage: r.nbytes for r in records}.values())
