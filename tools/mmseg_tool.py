"""Run mmseg's packaged tools (``mmseg/.mim/tools``) unchanged, after checking the config, and turn the
errors a user of this plugin meets first into messages that say what to do.

The tool itself runs exactly as ``python <site-packages>/mmseg/.mim/tools/train.py ...`` would: this
module exists so that users without an mmseg checkout can type ``python tools/train.py CONFIG``. It is
imported by ``tools/train.py`` and ``tools/test.py`` (and, by path, by the test helpers).

The checks are the library's (:func:`mmseg_actcomp.apis.checks.check_config`), which raises a typed
:class:`~mmseg_actcomp.apis.checks.ConfigError`; :func:`explain` adds what only this checkout knows
(the command that makes the weights, the sample data, the configs folder).
"""
import argparse
import glob
import importlib.util
import os
import os.path as osp
import runpy
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONVERTER = osp.join('tools', 'model_converters', 'mobilenetv2_torchvision2mmseg.py')
DATA_HINT = ('Prepare the real data as data/README.md says, or build the bundled sample with '
             '`python tools/make_sample_voc.py`.')


def find_mmseg_tool(name):
    """Path of mmseg's packaged tool ``name`` (e.g. 'train.py', 'test.py')."""
    import mmseg
    path = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', name)
    if not osp.isfile(path):
        raise FileNotFoundError(f'mmseg {mmseg.__version__} ships no tools/{name} at {path}; '
                                'reinstall mmsegmentation==1.2.2 (tools/install.sh)')
    return path


def _converter():
    """tools/model_converters/mobilenetv2_torchvision2mmseg.py as a module."""
    spec = importlib.util.spec_from_file_location('mobilenetv2_torchvision2mmseg', osp.join(REPO, CONVERTER))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_converted_mobilenet_v2(path):
    """Whether ``path`` is where the converter writes the ImageNet MobileNetV2 by default (the path
    our MobileNetV2 configs name), read from the working directory or from the repository root."""
    default = _converter().default_output()
    return osp.abspath(path) in (osp.abspath(default), osp.join(REPO, default))


def config_not_found_message(path):
    """The message for a config file (or one of its ``_base_``) that does not exist, with the closest
    configs of this repository."""
    from mmseg_actcomp.apis.checks import close_names, did_you_mean
    names = [osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)]
    hint = did_you_mean(close_names(osp.relpath(osp.abspath(path), REPO), names))
    return f'Config file {path!r} does not exist.{hint} The configs are under configs/.'


def hint(exc):
    """What to do about a :class:`~mmseg_actcomp.apis.checks.ConfigError`, beyond its own message
    (''): the commands of this checkout that make missing weights or data."""
    from mmseg_actcomp.apis.checks import CheckpointNotFoundError, DatasetNotFoundError
    if isinstance(exc, CheckpointNotFoundError) and exc.path and _is_converted_mobilenet_v2(exc.path):
        return (f' These are the ImageNet MobileNetV2 weights: make them with `make weights`, '
                f'i.e. python {CONVERTER}')
    if isinstance(exc, CheckpointNotFoundError):
        return ' Check load_from / the checkpoint argument.'
    if isinstance(exc, DatasetNotFoundError):
        return '\n' + DATA_HINT
    return ''


def explain(exc):
    """The message for a :class:`~mmseg_actcomp.apis.checks.ConfigError`: its own, then :func:`hint`."""
    return f'{exc}{hint(exc)}'


def _parse(name, argv):
    """The config, checkpoint (test.py) and --cfg-options of ``argv``, as mmseg's tool ``name`` reads them."""
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('config')
    if name == 'test.py':
        parser.add_argument('checkpoint')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args, _ = parser.parse_known_args(argv)
    return args


def check(name, argv):
    """Load the config of mmseg tool ``name``'s arguments ``argv`` as the tool will and check it
    (:func:`~mmseg_actcomp.apis.checks.check_config`, with the dataloaders the tool builds).

    Raises:
        FileNotFoundError: the config (or a ``_base_``) does not exist (``.filename`` is its path).
        ConfigError: what :func:`~mmseg_actcomp.apis.checks.check_config` finds.
    """
    from mmengine.config import Config

    from mmseg_actcomp.apis.checks import check_config
    args = _parse(name, argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if name == 'test.py':
        cfg.load_from = args.checkpoint  # as mmseg's test.py does
        dataloaders = ('test_dataloader',)
    else:
        dataloaders = ('train_dataloader', 'val_dataloader') if cfg.get('val_cfg') else ('train_dataloader',)
    check_config(cfg, dataloaders)


def _fail(message):
    print(f'\nerror: {message}', file=sys.stderr)
    sys.exit(1)


def run_mmseg_tool(name, argv=None):
    """Check the config, then run mmseg's packaged tool ``name`` as ``__main__`` with ``argv`` (default:
    this process's arguments), as this process's own entry point.

    A :class:`~mmseg_actcomp.apis.checks.ConfigError` (found by the checks, or raised by the plugin
    while the tool runs) or a missing config file prints ``error: <what to do>`` and exits 1 instead of
    a traceback (set MMSEG_ACTCOMP_TRACEBACK=1 to see it too). Other errors propagate as mmseg's would.
    """
    from mmseg_actcomp.apis.checks import ConfigError
    path = find_mmseg_tool(name)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and not argv[0].startswith('-'):  # else: --help, or mmseg's tool says what is missing
            check(name, argv)
        sys.argv = [path] + argv
        runpy.run_path(path, run_name='__main__')
    except (ConfigError, FileNotFoundError) as exc:
        if os.environ.get('MMSEG_ACTCOMP_TRACEBACK'):
            raise
        if isinstance(exc, ConfigError):
            _fail(explain(exc))
        if str(getattr(exc, 'filename', None) or '').endswith('.py'):
            _fail(config_not_found_message(exc.filename))
        raise
