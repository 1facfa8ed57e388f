"""The config line that turns activation compression on for any mmseg segmentor."""
import copy
import gc
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmcv.cnn import ConvModule
from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..compression import QUANTIZATION_BITS, validate_bits, validate_explained_variance
from ..memory.region import region_modules
from ..memory.report import align
from ..ops import LeanBatchNorm2d, make_lean
from ..ops.precise_bn import precise_norm_stats
from ..ops.convert import (CONV_TYPES, check_conv_path, compression_stats, freeze_all_but, select_last,
                           swap_convs, trace_conv_order)


@HOOKS.register_module()
class ActivationCompressionHook(Hook):
    """Fine-tune chosen convolutions with compressed activations; freeze the rest.

    Config::

        custom_imports = dict(imports=['mmseg_actcomp'], allow_failed_imports=False)
        custom_hooks = [dict(type='ActivationCompressionHook', method='hosvd',
                             explained_variance=0.8, num_layers=10)]

    Before training starts (``before_run``) the chosen ``nn.Conv2d`` layers are swapped in place for
    :class:`~mmseg_actcomp.ops.HOSVDConv2d` / :class:`~mmseg_actcomp.ops.SVDConv2d`, which share the
    conv's parameters and state-dict keys: the optimizer, ``load_from``, ``--resume`` and saved
    checkpoints see the very same tensors, and a checkpoint loads into a stock mmseg model.

    Args:
        method (str): ``'hosvd'``, ``'svd'``, or ``'none'`` (fine-tune the same layers without
            compression: the vanilla baseline). Defaults to ``'hosvd'``.
        explained_variance (float): ε in (0, 1]: each decomposed mode keeps the fewest components
            explaining this fraction of its energy. Ignored for ``'none'``. Defaults to 0.8.
        num_layers (int, optional): fine-tune the last N convolutions in the order the inference
            forward (``mode='tensor'``: backbone + decode head, classifier ``conv_seg`` included) runs
            them, found by tracing. Auxiliary heads, dropped at inference, are never chosen, nor convs
            the model itself freezes (EMANet's bases).
        layers (list[str], optional): fine-tune exactly these conv module paths instead, e.g.
            ``['decode_head.conv_seg', 'decode_head.bottleneck.conv']``. Give one of ``num_layers`` and
            ``layers``.
        freeze_others (bool): set ``requires_grad=False`` on every parameter outside the fine-tuned
            region, and keep the running statistics of BN layers whose parameters are all frozen
            (eval mode) so that frozen means unchanged. The region is the chosen convs plus the norm
            layer of their mmcv ``ConvModule``, if any; BN elsewhere (e.g. a ResNet block's ``bn1``)
            stays as the config says (``norm_eval``). Defaults to True.
        lean_region (bool): make the rest of the fine-tuned region keep no full-size activation
            either: ReLUs keep a bit-packed mask, BNs on running statistics keep nothing (or a
            compressed normalised input when their affine weights train), dropout regenerates its
            mask, frozen convs and pooling keep no input. The region is each chosen conv's parent
            module (its ConvModule, residual block or head). Input gradients stay exact, except
            through BNs on batch statistics (see ``norm_input_bits``). Only for 'svd'/'hosvd'; False
            reproduces the paper's accounting (only conv inputs compressed). Defaults to True.
        norm_input_bits (int, optional): with ``lean_region``, a region BN that trains on batch
            statistics (the config's default) keeps its input quantized to this many bits per element
            (one range per sample and channel; 1, 2, 4 or 8) instead of whole: its input and gamma
            gradients are then those of an input within half a quantization step of the true one.
            None keeps the input whole (exact gradients, 8x the bytes of 4 bits in float32). Its effect
            on learning: the ``hosvd-0.8`` (4 bits), ``-bn8``, ``-bn2`` and ``-exact-bn`` (None) rows of
            docs/finetune.md. Defaults to 4.
        freeze_region_norm_stats (bool): with ``lean_region``, run the region's BNs on their running
            statistics in training too (as ``norm_eval`` does for a backbone), so that they keep
            nothing of their input. This changes the forward (its effect on learning: the
            ``hosvd-0.8-frozen-bn`` row of docs/finetune.md), so it is off by default and BNs run as
            the config says. Defaults to False.
        precise_norm_batches (int): with ``freeze_region_norm_stats``, first replace those BNs'
            running statistics (the source task's exponential average) by their average over this many
            training batches of the new task (precise BN), once, when fine-tuning starts (not on
            resume: the checkpoint holds them). 0 keeps them as loaded. Defaults to 0.
        center (bool): the compressed convs keep their input's per-channel mean exactly and decompose
            only the rest, so that ranks follow the variation around the mean. Without it, ranks collapse
            to about 1 during fine-tuning and the weight gradients lose their direction
            (docs/grad_fidelity.md) and the run learns little (the ``hosvd-0.8-uncentred`` row of
            docs/finetune.md). Not for ``'none'``. Defaults to True; False is the paper's method.
        require_load_from (bool): fail at start unless the config loads a checkpoint (``load_from``
            or ``resume``): fine-tuning and calibration configs set it, so that a forgotten
            ``--cfg-options load_from=...`` cannot silently fine-tune a random network. Defaults to False.
    """

    priority = 'VERY_HIGH'  # the model must be final before other hooks (EMA, ...) see it in before_run

    def __init__(self, method: str = 'hosvd', explained_variance: float = 0.8,
                 num_layers: Optional[int] = None, layers: Optional[Sequence[str]] = None,
                 freeze_others: bool = True, lean_region: bool = True,
                 freeze_region_norm_stats: bool = False, require_load_from: bool = False,
                 center: bool = True, precise_norm_batches: int = 0,
                 norm_input_bits: Optional[int] = 4) -> None:
        if method not in CONV_TYPES:
            raise ValueError(f'ActivationCompressionHook: method={method!r} is not allowed; '
                             f'use one of {sorted(CONV_TYPES)}')
        try:
            self.explained_variance = validate_explained_variance(explained_variance)
        except (ValueError, TypeError) as e:
            raise ValueError(f'ActivationCompressionHook: explained_variance: {e}') from None
        if (num_layers is None) == (layers is None):
            raise ValueError('ActivationCompressionHook: give exactly one of num_layers=N and '
                             f'layers=[paths], got num_layers={num_layers!r}, layers={layers!r}')
        if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, int)
                                       or num_layers < 1):
            raise ValueError(f'ActivationCompressionHook: num_layers={num_layers!r} must be an '
                             'integer >= 1')
        if layers is not None and (isinstance(layers, str) or not layers
                                   or not all(isinstance(p, str) for p in layers)):
            raise ValueError(f'ActivationCompressionHook: layers={layers!r} must be a non-empty list '
                             'of module paths (str)')
        if len(set(layers or ())) != len(layers or ()):
            raise ValueError(f'ActivationCompressionHook: layers={list(layers)!r} names a layer twice')
        self.method = method
        self.num_layers = num_layers
        self.layers = list(layers) if layers is not None else None
        self.freeze_others = bool(freeze_others)
        self.require_load_from = bool(require_load_from)
        self.lean_region = bool(lean_region) and method != 'none'
        self.freeze_region_norm_stats = bool(freeze_region_norm_stats) and self.lean_region
        if not isinstance(center, bool):
            raise ValueError(f'ActivationCompressionHook: center={center!r} must be True or False')
        self.center = center and method != 'none'
        if isinstance(precise_norm_batches, bool) or not isinstance(precise_norm_batches, int) \
                or precise_norm_batches < 0:
            raise ValueError(f'ActivationCompressionHook: precise_norm_batches={precise_norm_batches!r} '
                             'must be an integer >= 0')
        if precise_norm_batches and not self.freeze_region_norm_stats:
            raise ValueError(f'ActivationCompressionHook: precise_norm_batches={precise_norm_batches} '
                             're-estimates the statistics of BNs that run on them: it needs '
                             'freeze_region_norm_stats=True (and lean_region=True, method svd or hosvd)')
        self.precise_norm_batches = precise_norm_batches
        if norm_input_bits is not None:
            try:
                validate_bits(norm_input_bits)
            except ValueError:
                raise ValueError(f'ActivationCompressionHook: norm_input_bits={norm_input_bits!r} must be '
                                 f'one of {list(QUANTIZATION_BITS)}, or None to keep region BN inputs '
                                 'whole') from None
        self.norm_input_bits = norm_input_bits
        self._region_norms: List[_BatchNorm] = []
        self.layer_paths: List[str] = []
        self.fine_tuned: Dict[str, nn.Conv2d] = {}
        self._eval_norms: List[nn.Module] = []

    # ------------------------------------------------------------------ the work, outside a runner
    def prepare(self, model: nn.Module) -> List[str]:
        """Choose, swap and freeze on a bare (unwrapped) segmentor. Idempotent. Returns the paths."""
        if is_model_wrapper(model):
            raise TypeError('ActivationCompressionHook.prepare expects the bare model, not '
                            f'{type(model).__name__}; pass wrapper.module')
        if self.layers is not None:
            paths = self.layers
            for p in paths:
                check_conv_path(model, p)
        else:
            try:
                # a conv the model itself freezes (EMANet's EMA bases) is not one to fine-tune
                trainable = [p for p in trace_inference_convs(model)
                             if model.get_submodule(p).weight.requires_grad]
                paths = select_last(trainable, self.num_layers)
            except ValueError as e:
                raise ValueError(f'ActivationCompressionHook: {e}') from None
        swap_convs(model, paths, self.method, self.explained_variance, self.center)
        if self.lean_region:
            for root in sorted(set(region_modules(paths)) - set(paths)):
                make_lean(model.get_submodule(root), self.explained_variance, self.method,
                          self.norm_input_bits)
        self.fine_tuned = {p: model.get_submodule(p) for p in paths}
        self.layer_paths = list(paths)
        trainable_ids = set()
        if self.freeze_others:
            trainable = list(self.fine_tuned.values()) + _convmodule_norms(model, paths)
            freeze_all_but(model, trainable)
            trainable_ids = {id(m) for m in trainable}

        def frozen(m):
            return (self.freeze_others and id(m) not in trainable_ids
                    and not any(p.requires_grad for p in m.parameters()))

        self._eval_norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and (
            frozen(m) or (self.freeze_region_norm_stats and isinstance(m, LeanBatchNorm2d)))]
        # the region's trainable BNs switched to running statistics: what precise_norm_batches updates
        self._region_norms = [m for m in self._eval_norms
                              if isinstance(m, LeanBatchNorm2d) and not frozen(m)]
        return self.layer_paths

    def summary(self, model: nn.Module) -> str:
        """Two tables: the chosen layers (path, type, shape of weight, trainable parameters), then the
        fine-tuned region's BNs (path, the statistics they normalise with, what they keep for backward)."""
        rows = [('#', 'layer', 'type', 'weight', 'trainable params')]
        for i, path in enumerate(self.layer_paths, 1):
            conv = self.fine_tuned[path]
            rows.append((str(i), path, type(conv).__name__, 'x'.join(map(str, conv.weight.shape)),
                         str(sum(p.numel() for p in conv.parameters() if p.requires_grad))))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        head = (f'ActivationCompressionHook: method={self.method}, '
                f'explained_variance={self.explained_variance}, {len(self.layer_paths)} layers, '
                f'lean_region={self.lean_region}, '
                f'freeze_region_norm_stats={self.freeze_region_norm_stats}, '
                f'precise_norm_batches={self.precise_norm_batches}, '
                f'norm_input_bits={self.norm_input_bits}, center={self.center}; '
                f'{trainable}/{total} parameters trainable')
        norms = [('region BN', 'statistics', 'keeps for backward')]
        for path, norm in model.named_modules():
            if isinstance(norm, LeanBatchNorm2d):
                norms.append((path, *self._norm_behaviour(norm)))
        text = head + '\n' + align(rows[0], rows[1:], left=len(rows[0]))
        if len(norms) > 1:
            text += '\n\n' + align(norms[0], norms[1:], left=len(norms[0]))
        return text

    def _norm_behaviour(self, norm: LeanBatchNorm2d) -> Tuple[str, str]:
        """(statistics, what it keeps) of a region BN during training, for :meth:`summary`."""
        if norm not in self._eval_norms:
            if norm.input_bits is None:
                return 'batch', 'its input whole (exact input and affine gradients)'
            return 'batch', f'its input in {norm.input_bits} bits per element (approximate gradients)'
        statistics = ('running, re-estimated over '
                      f'{self.precise_norm_batches} batches at the start' if norm in self._region_norms
                      and self.precise_norm_batches else 'running')
        if norm.weight is not None and norm.weight.requires_grad:
            return statistics, f'x_hat for the gamma gradient, {norm.method} eps {norm.explained_variance}'
        return statistics, 'nothing'

    # ------------------------------------------------------------------ runner glue
    def before_run(self, runner) -> None:
        twins = [h for h in runner.hooks if isinstance(h, ActivationCompressionHook)]
        if len(twins) > 1:
            raise ValueError(f'ActivationCompressionHook is given {len(twins)} times in custom_hooks; '
                             'give it once (use layers=[...] to choose several layers)')
        if self.require_load_from and not (runner.cfg.get('load_from') or runner.cfg.get('resume')):
            raise ValueError('ActivationCompressionHook(require_load_from=True): this config fine-tunes '
                             'a trained network but load_from is not set; add '
                             '--cfg-options load_from=CHECKPOINT (or --resume)')
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.prepare(model)
        if is_model_wrapper(runner.model) and self.freeze_others:
            # DDP records which parameters need gradients when it wraps the model: wrap again now that
            # the frozen ones are frozen, and drop the old wrapper (and its reducer hooks) first.
            old, runner.model = runner.model, None
            del old
            gc.collect()
            runner.model = runner.wrap_model(copy.deepcopy(runner.cfg.get('model_wrapper_cfg')), model)
        print_log(self.summary(model), logger='current')

    def before_train(self, runner) -> None:
        if not self.precise_norm_batches or not self._region_norms or runner.iter > 0:
            return  # nothing to re-estimate, or resumed: the checkpoint holds the statistics
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model

        def forward(batch):
            model(**model.data_preprocessor(batch, True), mode='tensor')

        # A loader of its own, built from the config as the runner built its own: iterating the runner's
        # would close its InfiniteSampler's shared index generator, ending training's data.
        loader = runner.build_dataloader(copy.deepcopy(runner.cfg.train_dataloader), seed=runner.seed)
        count = precise_norm_stats(model, self._region_norms, loader, forward, self.precise_norm_batches)
        for norm in self._region_norms:  # each rank averaged its own batches
            all_reduce(norm.running_mean, op='mean')
            all_reduce(norm.running_var, op='mean')
        print_log(f'ActivationCompressionHook: running statistics of the {len(self._region_norms)} '
                  f'region BNs re-estimated over {count} training batches (per rank)', logger='current')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self.set_norms_eval()

    def set_norms_eval(self) -> None:
        """Put frozen BNs (and, with ``freeze_region_norm_stats``, the region's BNs) back in
        running-statistics mode: the train loop calls ``model.train()`` at its start and after each
        validation."""
        for norm in self._eval_norms:
            norm.eval()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        stats = compression_stats(self.fine_tuned)
        if stats is not None:
            runner.message_hub.update_scalars({f'train/actcomp_{k}': v for k, v in stats.items()})


def trace_inference_convs(model: nn.Module) -> List[str]:
    """Conv paths of an mmseg segmentor in the order its inference forward runs them, traced without
    grad on a zero image of the preprocessor's size capped at 128x128 (the order does not depend on the
    size; a 512x512 trace of UPerNet costs seconds on a CPU).

    ``mode='tensor'`` first; ``mode='predict'`` where mmseg's tensor mode does not run (PointRend's
    cascade), and the preprocessor's full size where 128x128 is too small (LRASPP's 49x49 pooling).
    """
    full = tuple(getattr(getattr(model, 'data_preprocessor', None), 'size', None) or (128, 128))
    capped = tuple(min(s, 128) for s in full)
    attempts = [(capped, 'tensor'), (capped, 'predict')]
    if full != capped:
        attempts += [(full, 'tensor'), (full, 'predict')]
    param = next(model.parameters())
    modes = {m: m.training for m in model.modules()}
    model.eval()
    errors = []
    try:
        for size, mode in attempts:
            image = torch.zeros(1, 3, *size, device=param.device, dtype=param.dtype)
            try:
                with torch.no_grad():
                    return trace_conv_order(model, lambda: model(image, None, mode=mode))
            except (RuntimeError, TypeError, ValueError, IndexError) as e:
                errors.append(f"mode='{mode}' at {size[0]}x{size[1]}: {type(e).__name__}: {e}")
    finally:
        for m, training in modes.items():
            m.training = training
    raise ValueError('cannot trace the convolutions of the inference forward to choose num_layers (give '
                     'layers=[...] instead): ' + '; '.join(errors))


def _convmodule_norms(model: nn.Module, paths: Sequence[str]) -> List[nn.Module]:
    """The norm layers of the mmcv ConvModules whose ``conv`` is at one of ``paths``."""
    norms = []
    for path in paths:
        parent_path, _, leaf = path.rpartition('.')
        parent = model.get_submodule(parent_path) if parent_path else model
        if isinstance(parent, ConvModule) and leaf == 'conv' and parent.with_norm:
            norms.append(parent.norm)
    return norms

