"""Checks of a loaded mmengine ``Config`` before anything is built from it: the mistakes users of this
plugin meet first, each raised as a :class:`ConfigError` subclass that says what to change.

mmseg itself finds these mistakes only deep inside a run (a registry ``KeyError``, an ``AssertionError``
from the dataset, a ``FileNotFoundError`` from the checkpoint loader); here they are found in the config,
by looking at it, and raised by type. The tools (``tools/train.py``, ``tools/test.py``, the memory tool)
turn them into messages.

Every error class takes the message alone as its positional argument (as ``ValueError`` does) and
carries what it is about as attributes, ``None`` when unknown.
"""
import difflib
import os.path as osp
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

PLUGIN = 'mmseg_actcomp'
CUSTOM_IMPORTS_LINE = f"custom_imports = dict(imports=['{PLUGIN}'], allow_failed_imports=False)"

__all__ = ['ConfigError', 'PluginNotImportedError', 'UnknownTypeError', 'CheckpointNotFoundError',
           'DatasetNotFoundError', 'HookConfigError', 'check_config', 'check_plugin_imports',
           'check_types', 'check_hooks', 'check_checkpoints', 'check_datasets', 'CUSTOM_IMPORTS_LINE',
           'walk_dicts', 'close_names', 'did_you_mean']


class ConfigError(ValueError):
    """A config that cannot run as written; the message says what to change.

    Args:
        message (str): what is wrong and what to do.
        key (str, optional): where in the config, as ``--cfg-options`` spells it
            (e.g. ``'custom_hooks.0'``, ``'model.backbone.init_cfg'``).
    """

    def __init__(self, message: str, key: Optional[str] = None) -> None:
        super().__init__(message)
        self.key = key


class PluginNotImportedError(ConfigError):
    """The config uses a type of this plugin (``type_name``) without importing it in ``custom_imports``:
    mmseg's own tools, or any process that has not imported the plugin, could not build it."""

    def __init__(self, message: str, key: Optional[str] = None, type_name: Optional[str] = None) -> None:
        super().__init__(message, key)
        self.type_name = type_name


class UnknownTypeError(ConfigError):
    """``type=type_name`` names nothing any registry can build; ``registry`` is the kind of type the
    place in the config asks for (``'hook'``, ``'model'``, ...; ``None`` when not known), and
    ``suggestions`` the close names of that registry."""

    def __init__(self, message: str, key: Optional[str] = None, type_name: Optional[str] = None,
                 registry: Optional[str] = None, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message, key)
        self.type_name = type_name
        self.registry = registry
        self.suggestions = list(suggestions)


class CheckpointNotFoundError(ConfigError):
    """The local checkpoint file ``path`` that ``key`` names (``load_from``, a ``Pretrained``
    ``init_cfg`` or ``model.pretrained``) does not exist."""

    def __init__(self, message: str, key: Optional[str] = None, path: Optional[str] = None) -> None:
        super().__init__(message, key)
        self.path = path


class DatasetNotFoundError(ConfigError):
    """A dataset's ``data_root`` / ``ann_file`` / image folder (``path``) does not exist; ``keys`` are
    the datasets with missing data (``key`` is the first), e.g. ``'train_dataloader.dataset'``."""

    def __init__(self, message: str, key: Optional[str] = None, path: Optional[str] = None,
                 keys: Sequence[str] = ()) -> None:
        super().__init__(message, key)
        self.path = path
        self.keys = list(keys)


class HookConfigError(ConfigError):
    """A bad ``ActivationCompressionHook`` entry of ``custom_hooks`` (a value, a second entry, a missing
    ``load_from`` it requires, a layer the model does not have); the message names the key and value."""


# ------------------------------------------------------------------------------------------- walking
def walk_dicts(node, key: str = '') -> Iterator[Tuple[str, dict]]:
    """``(key, dict)`` for every dict under ``node`` (itself included), keys dotted as in
    ``--cfg-options`` (list items by index). The walk descends into a dict's values after the caller is
    done with it, so a value the caller replaces is not walked."""
    if isinstance(node, dict):
        yield key, node
        items = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return
    for name, value in items:
        yield from walk_dicts(value, f'{key}.{name}' if key else str(name))


def _typed(node, key: str = '') -> Iterator[Tuple[str, dict, str]]:
    """``(key, dict, type)`` for every dict under ``node`` whose ``type`` is a name (not a class)."""
    for where, d in walk_dicts(node, key):
        if isinstance(d.get('type'), str):
            yield where, d, d['type']


def _as_dict(cfg) -> dict:
    return cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)


# ---------------------------------------------------------------------------------------- registries
def _registries() -> Tuple[List, Dict[str, str]]:
    """Every registry of mmengine's tree (mmengine's roots, mmseg's and any other scope's children),
    each with its lazily imported modules (``locations``) imported, so that its keys are complete.

    Returns ``(registries, failed)``: ``failed`` maps the scope of a registry whose modules raised on
    import (a half-installed package, e.g. mmpretrain without its torchvision) to the error, so that a
    check of a config which never uses that package does not end its run; :func:`check_types` names the
    failure when a type is not found."""
    import mmengine.registry as engine_registries
    import mmseg.registry as seg_registries
    from mmengine.registry import Registry
    found, failed = [], {}
    todo = [r for m in (engine_registries, seg_registries) for r in vars(m).values()
            if isinstance(r, Registry)]
    while todo:
        reg = todo.pop()
        if any(reg is r for r in found):
            continue
        found.append(reg)
        try:
            reg.import_from_location()
        except Exception as error:  # noqa: BLE001 -- any import error of another package
            failed.setdefault(reg.scope, f'{type(error).__name__}: {error}')
        todo.extend(reg.children.values())
        if reg.parent is not None:
            todo.append(reg.parent)
    return found, failed


def _registry_keys(registries, name: Optional[str] = None) -> Set[str]:
    """Type names the ``registries`` named ``name`` (all when None) can build."""
    return {key for reg in registries if name is None or reg.name == name for key in reg.module_dict}


def _plugin_types(registries) -> Set[str]:
    """Type names this plugin registers (its classes' modules are under ``mmseg_actcomp``)."""
    return {key for reg in registries for key, obj in reg.module_dict.items()
            if getattr(obj, '__module__', '').split('.')[0] == PLUGIN}


# Which registry a place in the config builds from: its top-level key, then deeper keys that switch it.
_TOP_REGISTRY = {
    'model': 'model', 'custom_hooks': 'hook', 'default_hooks': 'hook', 'optim_wrapper': 'optim_wrapper',
    'param_scheduler': 'parameter scheduler', 'train_cfg': 'loop', 'val_cfg': 'loop', 'test_cfg': 'loop',
    'val_evaluator': 'metric', 'test_evaluator': 'metric', 'visualizer': 'visualizer',
    'log_processor': 'log_processor', 'model_wrapper_cfg': 'model_wrapper', 'tta_model': 'model',
    'train_dataloader': 'dataset', 'val_dataloader': 'dataset', 'test_dataloader': 'dataset',
    'tta_pipeline': 'transform',
}
_DEEP_REGISTRY = {
    'init_cfg': 'weight initializer', 'pipeline': 'transform', 'transforms': 'transform',
    'optimizer': 'optimizer', 'vis_backends': 'vis_backend', 'collate_fn': 'function',
}


def _registry_name(key: str) -> Optional[str]:
    """The registry name (``'hook'``, ``'model'``, ...) the type at ``key`` is built from, if known."""
    parts = key.split('.')
    name = _TOP_REGISTRY.get(parts[0])
    for part in parts[1:]:
        if part == 'sampler':  # a dataloader's sampler, or a decode head's pixel sampler
            name = 'data sampler' if name == 'dataset' else 'task util'
        name = _DEEP_REGISTRY.get(part, name)
    return name


def close_names(word: str, candidates) -> List[str]:
    """Up to 3 of ``candidates`` close to ``word`` (difflib, cutoff 0.6), closest first."""
    return difflib.get_close_matches(word, sorted(candidates), n=3, cutoff=0.6)


def did_you_mean(matches: Sequence[str]) -> str:
    """``" Did you mean 'a', 'b'?"`` for :func:`close_names`' ``matches``, ``''`` for none."""
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ''


# -------------------------------------------------------------------------------------------- checks
def _imports(cfg) -> List[str]:
    custom = cfg.get('custom_imports') or {}
    imports = custom.get('imports', []) if isinstance(custom, dict) else []
    return [imports] if isinstance(imports, str) else list(imports)


def check_plugin_imports(cfg) -> None:
    """Raise :class:`PluginNotImportedError` when the config uses a type this plugin registers but
    its ``custom_imports`` does not import ``mmseg_actcomp``.

    A process that imported the plugin (as every tool here does) could build the type anyway: the
    mistake would show only when the same config meets mmseg's own ``tools/train.py``.
    """
    if any(i == PLUGIN or i.startswith(PLUGIN + '.') for i in _imports(cfg)):
        return
    plugin_types = _plugin_types(_registries()[0])
    for key, _, type_name in _typed(_as_dict(cfg)):
        if type_name in plugin_types:
            raise PluginNotImportedError(
                f'{type_name!r} is a type of the mmseg-actcomp plugin, which this config does not '
                f'import. Add this line to the config:\n    {CUSTOM_IMPORTS_LINE}',
                key=key, type_name=type_name)


def _import_failures(failed: Dict[str, str]) -> str:
    """The part of an unknown type's message that says which scopes' modules could not be imported."""
    return ''.join(f' Not searched: the modules of scope {scope!r} failed to import ({error}); '
                   f'if the type is one of {scope!r}\'s, fix that install.' for scope, error in failed.items())


def check_types(cfg) -> None:
    """Raise :class:`UnknownTypeError` for the first ``type='Name'`` (anywhere in the config) that no
    registry of mmseg's or mmengine's tree can build, with the close names of the registry its place
    builds from ("Did you mean ..."). Scoped names (``'mmdet.X'``) and classes given as objects are
    left to mmengine."""
    registries, failed = _registries()
    known = _registry_keys(registries)
    for key, _, type_name in _typed(_as_dict(cfg)):
        if type_name in known or '.' in type_name:
            continue
        registry = _registry_name(key)
        candidates = _registry_keys(registries, registry) if registry else set()
        matches = close_names(type_name, candidates or known)
        kind = f'{registry} type' if registry else 'type in any registry'
        raise UnknownTypeError(f'{type_name!r} is not a registered {kind} (at {key}.type).'
                               f'{did_you_mean(matches)}{_import_failures(failed)}',
                               key=key, type_name=type_name, registry=registry, suggestions=matches)


def check_hooks(cfg) -> None:
    """Build the config's ``ActivationCompressionHook`` entries as the runner would (their values are
    checked in the constructor) and refuse a second entry; raises :class:`HookConfigError`."""
    from mmseg.registry import HOOKS
    entries = [(i, h) for i, h in enumerate(cfg.get('custom_hooks') or [])
               if isinstance(h, dict) and h.get('type') == 'ActivationCompressionHook']
    if len(entries) > 1:
        raise HookConfigError(f'ActivationCompressionHook is given {len(entries)} times in custom_hooks; '
                              'give it once (use layers=[...] to choose several layers)',
                              key=f'custom_hooks.{entries[1][0]}')
    for _, entry in entries:
        HOOKS.build(dict(entry))  # HookConfigError with the key and value


def _is_local(path) -> bool:
    return isinstance(path, str) and bool(path) and '://' not in path


def check_checkpoints(cfg, load_from: bool = True) -> None:
    """Raise :class:`CheckpointNotFoundError` when a local checkpoint the config names does not exist:
    ``load_from`` (when ``load_from``), a ``Pretrained`` ``init_cfg``'s ``checkpoint`` anywhere in
    ``model``, or ``model.pretrained``. URLs (``open-mmlab://``, ``https://``, ...) are not checked."""
    named = []
    if load_from and _is_local(cfg.get('load_from')):
        named.append(('load_from', cfg.get('load_from')))
    model = _as_dict(cfg).get('model') or {}
    if _is_local(model.get('pretrained')):
        named.append(('model.pretrained', model['pretrained']))
    for key, d, type_name in _typed(model, 'model'):
        if type_name == 'Pretrained' and _is_local(d.get('checkpoint')):
            named.append((f'{key}.checkpoint', d['checkpoint']))
    for key, path in named:
        if not osp.isfile(path):
            raise CheckpointNotFoundError(f'Checkpoint not found: {path} (named by {key}) does not exist.',
                                          key=key, path=path)


def _datasets(node, key: str) -> Iterator[Tuple[str, dict]]:
    """A dataloader's dataset and those it wraps (``ConcatDataset.datasets``, ``RepeatDataset.dataset``)."""
    if not isinstance(node, dict):
        return
    yield key, node
    for i, sub in enumerate(node.get('datasets') or []):
        yield from _datasets(sub, f'{key}.datasets.{i}')
    yield from _datasets(node.get('dataset'), f'{key}.dataset')


def _missing_data(dataset: dict) -> Optional[str]:
    """The first path a dataset reads that does not exist (as mmseg's ``BaseSegDataset`` joins them), or
    None: ``data_root``, then ``ann_file`` (a split file, or a folder meaning 'scan the images'), then
    the image folder when there is no split file."""
    root = dataset.get('data_root') or ''
    if not isinstance(root, str) or '://' in root:
        return None
    if root and not osp.isdir(root):
        return root

    def joined(path):
        return path if osp.isabs(path) or not root else osp.join(root, path)

    ann_file = dataset.get('ann_file') or ''
    if isinstance(ann_file, str) and ann_file:
        return None if osp.exists(joined(ann_file)) else joined(ann_file)
    prefix = dataset.get('data_prefix') or {}
    img_path = prefix.get('img_path') if isinstance(prefix, dict) else None
    if _is_local(img_path) and not osp.isdir(joined(img_path)):
        return joined(img_path)
    return None


def check_datasets(cfg, dataloaders: Sequence[str] = ('train_dataloader', 'val_dataloader')) -> None:
    """Raise :class:`DatasetNotFoundError` when a dataset of ``dataloaders`` reads a path that does not
    exist (relative paths are read from the working directory, as mmseg's configs mean them). The
    message names the first missing path and the ``--cfg-options`` that point every such dataset at
    another folder."""
    missing = []
    for loader in dataloaders:
        dataloader = cfg.get(loader)
        if not isinstance(dataloader, dict):
            continue
        for key, dataset in _datasets(_as_dict(dataloader).get('dataset'), f'{loader}.dataset'):
            path = _missing_data(dataset)
            if path is not None:
                missing.append((key, path, 'data_root' in dataset))
    if not missing:
        return
    key, path, _ = missing[0]
    options = ' '.join(f'{k}.data_root=DIR' if has_root else f'{k}.ann_file=FILE'
                       for k, _, has_root in missing)
    raise DatasetNotFoundError(
        f'Dataset not found: {path} does not exist (read by {key}). Point the config at your data, e.g. '
        f'--cfg-options {options}', key=key, path=path, keys=[k for k, _, _ in missing])


def check_config(cfg, dataloaders: Sequence[str] = ('train_dataloader', 'val_dataloader'),
                 load_from: bool = True) -> None:
    """Check a loaded config before running it; raise the first :class:`ConfigError` found.

    In order: plugin types used without ``custom_imports`` (:func:`check_plugin_imports`), type names
    no registry can build (:func:`check_types`), the ``ActivationCompressionHook`` entries
    (:func:`check_hooks`), missing checkpoint files (:func:`check_checkpoints`), then missing data of
    the ``dataloaders`` that will run (:func:`check_datasets`).

    Args:
        cfg (mmengine.Config): the config as the run will see it (``--cfg-options`` merged).
        dataloaders (Sequence[str]): the dataloaders the run builds, e.g. ``('test_dataloader',)``
            for testing.
        load_from (bool): check ``cfg.load_from`` too.

    Raises:
        PluginNotImportedError, UnknownTypeError, HookConfigError, CheckpointNotFoundError,
        DatasetNotFoundError: all :class:`ConfigError` (a ``ValueError``).
    """
    check_plugin_imports(cfg)
    check_types(cfg)
    check_hooks(cfg)
    check_checkpoints(cfg, load_from=load_from)
    check_datasets(cfg, dataloaders)
