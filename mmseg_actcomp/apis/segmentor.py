"""An mmseg config outside a runner: load it, build its segmentor (with weights) and train batches, do its
``ActivationCompressionHook``'s surgery as training does (:class:`~mmseg_actcomp.ops.region.FineTuneRegion`),
compute its loss, and measure the training memory of real forward+backward steps
(:func:`measure_config`, the memory tool's engine).

No runner is created (so no work dir): the model comes from ``MODELS``, the data from
``Runner.build_dataloader(cfg.train_dataloader)``, the hook from mmseg's ``HOOKS``. The measurement
itself is :mod:`mmseg_actcomp.memory` (torch only); this module is its mmseg side.
"""
import contextlib
import copy
import logging
import os.path as osp
import random
from itertools import islice
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger, print_log
from mmengine.registry import init_default_scope
from mmengine.runner import Runner, load_checkpoint, set_random_seed
from mmengine.utils import ProgressBar, import_modules_from_strings
from torch import nn

from ..memory import build_report, measure_steps
from ..ops.region import FineTuneRegion
from .checks import (ConfigError, check_checkpoints, check_datasets, check_hooks, check_plugin_imports,
                     check_types)

HOOK_TYPE = 'ActivationCompressionHook'
NO_HOOK_NOTE = (f'no {HOOK_TYPE} in custom_hooks: the whole model is measured as the config trains it '
                '(vanilla), with no fine-tuned region')


class MeasureError(Exception):
    """A problem with the user's input (config, data, checkpoint, device), with what to do about it."""


@contextlib.contextmanager
def explained_errors(what: str):
    """Re-raise a :class:`~mmseg_actcomp.apis.checks.ConfigError` (the checks of
    :mod:`~mmseg_actcomp.apis.checks`, a bad hook entry) as :class:`MeasureError` ``'{what}: ...'``,
    the typed error as its cause."""
    try:
        yield
    except ConfigError as exc:
        raise MeasureError(f'{what}: {exc}') from exc


def check_device(device: str) -> torch.device:
    """``'cpu'``, ``'cuda'`` or ``'cuda:N'`` as a device that exists here, else :class:`MeasureError`."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise MeasureError(f'unknown device {device!r}: use cpu or cuda') from None
    if parsed.type not in ('cpu', 'cuda'):
        raise MeasureError(f'unknown device {device!r}: use cpu or cuda')
    if parsed.type == 'cuda' and not torch.cuda.is_available():
        raise MeasureError(f'--device {device} asked for CUDA, but this torch '
                           f'({torch.__version__}) sees no CUDA device; use --device cpu')
    return parsed


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """The config at ``path`` with ``cfg_options`` merged, mmseg's default scope set and its
    ``custom_imports`` imported (which registers the plugin's layers and hook); its types checked
    (:func:`~mmseg_actcomp.apis.checks.check_plugin_imports`, :func:`~mmseg_actcomp.apis.checks.check_types`).
    Data and checkpoints are checked where they are read (:func:`train_batches`, :func:`build_segmentor`)."""
    if not osp.isfile(path):
        raise MeasureError(f'config file {path!r} does not exist')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    with explained_errors('config'):
        check_plugin_imports(cfg)
        check_types(cfg)
    return cfg


@contextlib.contextmanager
def _quiet_logs(level=logging.WARNING):
    """Raise the current mmengine logger's level: ``init_weights`` logs one line per parameter."""
    logger = MMLogger.get_current_instance()
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def load_weights(model: nn.Module, checkpoint: str) -> None:
    """Load ``checkpoint`` into ``model`` with mmengine's loader (torch's own ``weights_only`` policy
    applies; importing ``mmseg_actcomp`` allow-lists what mmengine checkpoints hold)."""
    if not osp.isfile(checkpoint):
        raise MeasureError(f'checkpoint {checkpoint!r} does not exist')
    try:
        load_checkpoint(model, checkpoint, map_location='cpu', logger='current')
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means the same to the user
        raise MeasureError(f'could not load checkpoint {checkpoint!r}: '
                           f'{type(exc).__name__}: {exc}{_refused_globals_hint(checkpoint)}') from exc


def _refused_globals_hint(checkpoint: str) -> str:
    """What to do when ``checkpoint`` holds globals torch's weights_only loader refuses (asked of torch,
    which names them), else ''."""
    try:
        refused = torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint)
    except (ValueError, RuntimeError, OSError):  # not a torch.save file: nothing to add
        return ''
    if not refused:
        return ''
    return (f'\ntorch refuses to unpickle {refused} with weights_only=True. If you trust the file, rerun '
            'with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (your choice: it disables that protection for every '
            'file this process loads).')


def build_segmentor(cfg: Config, checkpoint: Optional[str] = None) -> nn.Module:
    """The config's model with training's weights: ``init_weights()``, then ``checkpoint`` (or the
    config's ``load_from`` when no checkpoint is given)."""
    from mmseg.registry import MODELS
    with explained_errors('model'):
        check_checkpoints(cfg, load_from=False)  # the model's own (Pretrained); load_from: load_weights
        model = MODELS.build(cfg.model)
    with _quiet_logs():
        model.init_weights()
    checkpoint = checkpoint or cfg.get('load_from')
    if checkpoint:
        load_weights(model, checkpoint)
    return model


def compression_hook_cfg(cfg: Config) -> Optional[dict]:
    """The single ``ActivationCompressionHook`` entry of ``cfg.custom_hooks``, or None; a second entry or a
    bad value is a :class:`MeasureError` (:func:`~mmseg_actcomp.apis.checks.check_hooks`)."""
    with explained_errors('custom_hooks'):
        check_hooks(cfg)
    entries = [h for h in cfg.get('custom_hooks', None) or [] if h.get('type') == HOOK_TYPE]
    return copy.deepcopy(entries[0]) if entries else None


def compression_region(cfg: Config) -> Optional[FineTuneRegion]:
    """The :class:`~mmseg_actcomp.ops.region.FineTuneRegion` of the config's ``ActivationCompressionHook``
    (its keys checked as training checks them), not yet applied; None when the config has no such hook."""
    from mmseg.registry import HOOKS
    hook_cfg = compression_hook_cfg(cfg)
    if hook_cfg is None:
        return None
    with explained_errors('custom_hooks'):
        return HOOKS.build(hook_cfg).region


def apply_compression_hook(cfg: Config, model: nn.Module) -> Tuple[Optional[FineTuneRegion], List[str]]:
    """Apply the config's :func:`compression_region` to ``model`` (choose, swap, make lean, freeze), as
    training's ``before_run`` does.

    Returns:
        ``(region, layer_paths)``, or ``(None, [])`` when the config has no such hook.
    """
    region = compression_region(cfg)
    if region is None:
        return None, []
    return region, list(region.apply(model))


def budget_batches(region: Optional[FineTuneRegion]) -> int:
    """How many batches the region's ``memory_budget_mib`` calibrates on (0 without a budget)."""
    return region.budget_batches if region is not None and region.memory_budget_mib is not None else 0


def fit_budget(region: FineTuneRegion, model: nn.Module, loss_of_batch: Callable[[dict], torch.Tensor],
               batches: Sequence[dict]) -> None:
    """Choose the region's thresholds within ``memory_budget_mib`` on ``batches`` as training's hook does
    when it starts (:meth:`~mmseg_actcomp.ops.region.FineTuneRegion.fit_budget`), ``loss_of_batch`` its loss;
    an infeasible budget is a :class:`MeasureError` saying the minimum."""
    try:
        region.fit_budget(model, lambda batch: loss_of_batch(batch).backward(), batches)
    except ValueError as exc:  # BudgetInfeasibleError, or too few batches
        raise MeasureError(f'custom_hooks: {HOOK_TYPE}: {exc}') from exc
    print_log(f'{HOOK_TYPE}: {region.budget_table}', logger='current')


def budget_note(region: FineTuneRegion, report: dict) -> str:
    """The report's line on the budget: the choice, and the measured kept bytes of the chosen layers."""
    budget, kept = region.memory_budget_mib, report['totals']['estimate']
    verdict = 'within' if kept['peak_mib'] <= budget else 'OVER'
    return (f'memory_budget_mib={budget:g}: explained_variance chosen per layer on the first '
            f'{region.budget_batches} batches (explained_variance_per_layer); the chosen layers kept '
            f"{kept['peak_mib']:.3f} MiB at most in a measured batch ({kept['mean_mib']:.3f} on average): "
            f'{verdict} the budget')


def set_train_mode(model: nn.Module, region: Optional[FineTuneRegion]) -> None:
    """``model.train()`` (mmseg backbones honour ``norm_eval`` there), then the BNs the region keeps on
    running statistics back in eval mode, as the hook does before each training iteration."""
    model.train()
    if region is not None:
        region.set_norms_eval()


@contextlib.contextmanager
def seeded_global_rngs(seed: int):
    """Python's, numpy's and torch's global random generators seeded with ``seed`` inside the block and
    restored after it, so that what draws from them inside (mmcv's random transforms use numpy's) does
    the same on every call, and the caller's random streams go on as if the block had not run."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        set_random_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def train_batches(cfg: Config, num_batches: int, seed: int = 0) -> List[dict]:
    """The first ``num_batches`` batches of the config's train dataloader (fewer if it has fewer): the
    same batches, augmentation included, on every call with the same ``seed`` (the random transforms draw
    from the global generators, seeded here: :func:`seeded_global_rngs`)."""
    with explained_errors('train_dataloader'), seeded_global_rngs(seed):
        check_datasets(cfg, ('train_dataloader',))
        loader = Runner.build_dataloader(cfg.train_dataloader, seed=seed)
        batches = list(islice(iter(loader), num_batches))
    if len(batches) < num_batches:
        print_log(f'the train dataloader gave only {len(batches)} of {num_batches} batches',
                  logger='current', level=logging.WARNING)
    if not batches:
        raise MeasureError('the train dataloader gave no batch')
    return batches


class SegmentorLoss:
    """``batch -> loss ()`` for an mmseg segmentor, as its ``train_step`` computes it (preprocess,
    ``mode='loss'``, ``parse_losses``); remembers the preprocessed input shape ``(B, 3, H, W)``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.input_shape: Optional[Tuple[int, ...]] = None
        self.dtype: Optional[str] = None

    def __call__(self, batch: dict) -> torch.Tensor:
        data = self.model.data_preprocessor(batch, True)
        self.input_shape = tuple(data['inputs'].shape)
        self.dtype = str(data['inputs'].dtype).replace('torch.', '')
        loss, _ = self.model.parse_losses(self.model(**data, mode='loss'))
        return loss


def versions() -> dict:
    """Versions of the packages the figures depend on."""
    import mmcv
    import mmengine
    import mmseg

    from .. import __version__
    return {'torch': torch.__version__, 'mmseg': mmseg.__version__, 'mmengine': mmengine.__version__,
            'mmcv': mmcv.__version__, 'mmseg_actcomp': __version__}


def _run_meta(config: str, checkpoint: Optional[str], region: Optional[FineTuneRegion],
              hook_cfg: Optional[dict], layer_paths: Sequence[str], device: torch.device) -> dict:
    """The description of a run written at the top of its report."""
    method = region.method if region is not None else None
    per_layer = region.budget_choice if region is not None else {}
    return {
        'config': config, 'checkpoint': checkpoint, 'hook': hook_cfg, 'method': method,
        'explained_variance': (None if method in (None, 'none', 'gradfilt') or per_layer
                               else region.explained_variance),
        'patch_size': region.patch_size if method == 'gradfilt' else None,
        'memory_budget_mib': region.memory_budget_mib if region is not None else None,
        'explained_variance_per_layer': dict(per_layer) or None,
        'center': region.center if region is not None else None,
        'num_layers': len(layer_paths), 'device': str(device),
        'notes': [] if region is not None else [NO_HOOK_NOTE],
    }


def measure_config(config: str, checkpoint: Optional[str] = None, num_batches: int = 10,
                   cfg_options: Optional[dict] = None, device: str = 'cpu', seed: int = 0,
                   progress: bool = True, log: Optional[str] = None) -> dict:
    """Measure the activation memory of training ``config`` on its own train data.

    Builds the segmentor (``init_weights``, then ``checkpoint`` or the config's ``load_from``), applies
    the config's ``ActivationCompressionHook`` (its region: choose, swap, freeze), switches to train mode,
    chooses the thresholds within the hook's ``memory_budget_mib`` (if set) on the first ``budget_batches``
    batches as training does, and runs ``num_batches`` forward+backward steps on batches ``(B, 3, H, W)`` of
    the train dataloader, with no optimizer step.

    Args:
        config: path of an mmseg config.
        checkpoint: weights to load; their ranks differ from those of random weights.
        num_batches: >= 1.
        cfg_options: overrides merged into the config (as ``--cfg-options``).
        device: ``'cpu'`` or ``'cuda[:N]'``; the step's peak is measured on both.
        seed: seeds the weights' initialisation and the data order/augmentation.
        progress: show a progress bar.
        log: training log or work dir of this config's run, recorded for the Pareto plot.

    Returns:
        The report of :func:`mmseg_actcomp.memory.report.build_report`, with ``batch_shape``,
        ``dtype``, ``versions`` and the run's description.

    Raises:
        MeasureError: bad input, with what to do.
    """
    if not isinstance(num_batches, int) or num_batches < 1:
        raise MeasureError(f'--num-batches must be an integer >= 1, got {num_batches!r}')
    device = check_device(device)
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise MeasureError(f'checkpoint {checkpoint!r} does not exist')
    cfg = load_config(config, cfg_options)
    set_random_seed(seed)
    region = compression_region(cfg)
    calibration = budget_batches(region)
    # first: missing data fails before the model builds
    batches = train_batches(cfg, max(num_batches, calibration), seed)
    model = build_segmentor(cfg, checkpoint)
    layer_paths = list(region.apply(model)) if region is not None else []
    model.to(device)
    set_train_mode(model, region)
    loss_of_batch = SegmentorLoss(model)
    if calibration:
        fit_budget(region, model, loss_of_batch, batches[:calibration])
    batches = batches[:num_batches]
    bar = ProgressBar(len(batches)) if progress else None
    steps = measure_steps(model, batches, loss_of_batch, layer_paths, device,
                          on_step=None if bar is None else lambda step: bar.update())
    meta = _run_meta(config, checkpoint or cfg.get('load_from'), region, compression_hook_cfg(cfg),
                     layer_paths, device)
    meta.update(batch_shape=list(loss_of_batch.input_shape), dtype=loss_of_batch.dtype, log=log,
                versions=versions())
    report = build_report(steps, layer_paths, meta)
    if region is not None and region.budget_choice:
        report['notes'].append(budget_note(region, report))
    return report
