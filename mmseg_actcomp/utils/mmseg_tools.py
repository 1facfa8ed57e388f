"""Run mmseg's packaged tools (``mmseg/.mim/tools``) unchanged, turning the few errors a user of this
plugin meets first into messages that say what to do.

The tool itself runs exactly as ``python <site-packages>/mmseg/.mim/tools/train.py ...`` would: these
wrappers exist so users without an mmseg checkout can type ``python tools/train.py CONFIG``.
"""
import difflib
import glob
import os
import os.path as osp
import re
import runpy
import sys

PLUGIN_TYPES = ('ActivationCompressionHook', 'SVDConv2d', 'HOSVDConv2d')
CUSTOM_IMPORTS_LINE = "custom_imports = dict(imports=['mmseg_actcomp'], allow_failed_imports=False)"
MOBILENET_V2_WEIGHTS = 'data/pretrained/mobilenet_v2_imagenet.pth'  # where `make weights` writes them
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def find_mmseg_tool(name):
    """Path of mmseg's packaged tool ``name`` (e.g. 'train.py', 'test.py')."""
    import mmseg
    path = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', name)
    if not osp.isfile(path):
        raise FileNotFoundError(f'mmseg {mmseg.__version__} ships no tools/{name} at {path}; '
                                'reinstall mmsegmentation==1.2.2 (tools/install.sh)')
    return path


def _registry_keys(scope, registry_name):
    """Every type name a registry (and its parents) can build, for 'did you mean' hints."""
    import mmengine.registry as engine_registries
    import mmseg.registry as seg_registries
    keys = set()
    for module in (seg_registries, engine_registries):
        for reg in vars(module).values():
            if getattr(reg, 'name', None) == registry_name and hasattr(reg, 'module_dict'):
                while reg is not None:
                    keys.update(reg.module_dict)
                    reg = reg.parent
    return sorted(keys)


def _missing_import_message(type_name):
    return (f'{type_name!r} is a type of the mmseg-actcomp plugin, which this config does not import. '
            f'Add this line to the config:\n    {CUSTOM_IMPORTS_LINE}')


def _close(word, candidates):
    matches = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ''


def explain_error(exc):
    """A message saying what to do for the errors users of this plugin meet first, else None.

    Handles: a config file or checkpoint that does not exist, a type that is not registered (usually a missing
    ``custom_imports``), a dataset folder or split file that does not exist, and a bad value given to
    the ActivationCompressionHook.
    """
    text = str(exc)
    if isinstance(exc, FileNotFoundError) and str(exc.filename or '').endswith('.py'):
        path = exc.filename
        names = [osp.relpath(p, REPO_ROOT) for p in glob.glob(osp.join(REPO_ROOT, 'configs', '**', '*.py'),
                                                                recursive=True)]
        hint = _close(osp.relpath(osp.abspath(path), REPO_ROOT), names)
        return f'Config file {path!r} does not exist.{hint} The configs are under configs/.'
    m = re.search(r'(\S+\.pth) can not be found', text)
    if isinstance(exc, FileNotFoundError) and m:
        if osp.basename(m.group(1)) == osp.basename(MOBILENET_V2_WEIGHTS):
            return (f'ImageNet MobileNetV2 weights not found at {m.group(1)}. Make them with `make weights`, '
                    f'i.e. python tools/model_converters/mobilenetv2_torchvision2mmseg.py {MOBILENET_V2_WEIGHTS}')
        return f'Checkpoint not found: {m.group(1)}. Check load_from / the checkpoint argument.'
    m = re.search(r'(\w+) is not in the (?:(\w+)::)?(\w+) registry', text)
    if isinstance(exc, KeyError) and m:
        name, scope, registry_name = m.groups()
        if name in PLUGIN_TYPES or name.endswith(('Conv2d', 'CompressionHook')):
            return _missing_import_message(name)
        return (f'{name!r} is not a registered {registry_name} type.'
                f'{_close(name, _registry_keys(scope, registry_name))}')
    m = re.search(r'Failed to load `ann_file` (\S+)', text)
    if isinstance(exc, AssertionError) and m:
        data_root = osp.dirname(osp.dirname(osp.dirname(m.group(1))))
        return (f'Dataset not found: {m.group(1)} does not exist, so data_root {data_root!r} holds no '
                'Pascal VOC aug tree. Prepare the real data as data/README.md says, or build the bundled '
                'sample with `python tools/make_sample_voc.py`, or point the config at your data, e.g. '
                '--cfg-options train_dataloader.dataset.datasets.0.data_root=DIR '
                'train_dataloader.dataset.datasets.1.data_root=DIR val_dataloader.dataset.data_root=DIR')
    if isinstance(exc, (ValueError, TypeError)) and 'ActivationCompressionHook' in text:
        return text  # the hook's own messages already name the key, the value and what is allowed
    return None


def _plugin_types_used(node):
    """The plugin's type names that a config (or any part of it) asks the registries for."""
    if isinstance(node, dict):
        found = {node['type']} if node.get('type') in PLUGIN_TYPES else set()
        for value in node.values():
            found |= _plugin_types_used(value)
        return found
    if isinstance(node, (list, tuple)):
        return set().union(*map(_plugin_types_used, node)) if node else set()
    return set()


def check_plugin_imported(argv):
    """The message for a config (first argument of ``argv``, with its ``--cfg-options``) that uses the
    plugin's types without importing it, else None.

    Running through this module imports the plugin anyway, which would hide the mistake until the same
    config meets mmseg's own train.py (or a second process): so say it here as mmseg would fail there.
    """
    import argparse
    from mmengine.config import Config, DictAction
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('config')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args, _ = parser.parse_known_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    used = _plugin_types_used(cfg.to_dict())
    imports = (cfg.get('custom_imports') or {}).get('imports', [])
    if used and 'mmseg_actcomp' not in imports:
        return _missing_import_message(sorted(used)[0])
    return None


def run_mmseg_tool(name, argv=None):
    """Run mmseg's packaged tool ``name`` as ``__main__`` with ``argv`` (default: this process's).

    On a known user error, print what to do and exit 1 instead of showing mmengine's traceback
    (set MMSEG_ACTCOMP_TRACEBACK=1 to see it too).
    """
    path = find_mmseg_tool(name)
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [path] + argv
    try:
        message = check_plugin_imported(argv) if argv and not argv[0].startswith('-') else None
        if message is not None:
            print(f'\nerror: {message}', file=sys.stderr)
            sys.exit(1)
        runpy.run_path(path, run_name='__main__')
    except (FileNotFoundError, KeyError, AssertionError, ValueError, TypeError) as exc:
        message = explain_error(exc)
        if message is None or os.environ.get('MMSEG_ACTCOMP_TRACEBACK'):
            raise
        print(f'\nerror: {message}', file=sys.stderr)
        sys.exit(1)
