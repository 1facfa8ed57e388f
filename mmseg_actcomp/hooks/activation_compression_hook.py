"""The config line that turns activation compression on for any mmseg segmentor."""
import contextlib
import copy
import gc
import inspect
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from ..apis.checks import HookConfigError
from ..apis.segmentor import SegmentorLoss
from ..ops.budget import Cost
from ..ops.precise_bn import precise_norm_stats
from ..ops.region import FineTuneRegion


#: where checkpoints keep ``subspace='warm'``/``'frozen'``'s bases: {layer path: {'bases': {mode: (I_n, r_n)},
#: ...}} (:meth:`FineTuneRegion.subspace_states`)
SUBSPACES_KEY = 'actcomp_subspaces'
#: where checkpoints keep ``memory_budget_mib``'s choice: {layer path: explained_variance}
BUDGET_CHOICE_KEY = 'actcomp_explained_variance'


@HOOKS.register_module()
class ActivationCompressionHook(Hook):
    """Fine-tune chosen convolutions, linear layers and attention projections with compressed activations;
    freeze the rest.

    Config::

        custom_imports = dict(imports=['mmseg_actcomp'], allow_failed_imports=False)
        custom_hooks = [dict(type='ActivationCompressionHook', num_layers=10)]

    The defaults (HOSVD at ε 0.9 with the batch mode kept whole, region BNs in 2 bits) are the setting that
    kept most of vanilla fine-tuning's gain at at least 20x less region memory on the learning benchmark
    (docs/finetune.md); the paper's HOSVD is ``explained_variance=0.8, truncate_batch=True``.

    Before training starts (``before_run``) the chosen ``nn.Conv2d`` layers are swapped in place for
    :class:`~mmseg_actcomp.ops.HOSVDConv2d` / :class:`~mmseg_actcomp.ops.SVDConv2d` /
    :class:`~mmseg_actcomp.ops.GradFilterConv2d`, the chosen ``nn.Linear`` layers (transformer MLPs
    and projections) for :class:`~mmseg_actcomp.ops.HOSVDLinear` / :class:`~mmseg_actcomp.ops.SVDLinear`,
    and the chosen query, key and value projections of an attention for
    :class:`~mmseg_actcomp.ops.HOSVDProjection` / :class:`~mmseg_actcomp.ops.SVDProjection`, which share the
    layer's parameters and state-dict keys: the optimizer, ``load_from``, ``--resume`` and saved checkpoints
    see the very same tensors, and a checkpoint loads into a stock mmseg model. Every
    ``nn.MultiheadAttention`` is first made a :class:`~mmseg_actcomp.ops.LeanMultiheadAttention` (the same
    Parameters, keys and outputs) whose projections run as layers.

    The hook is glue: every key but ``require_load_from`` goes to
    :class:`~mmseg_actcomp.ops.region.FineTuneRegion` (``hook.region``), which does the surgery and which
    the memory tool and the benchmarks call without a runner. A bad entry raises
    :class:`~mmseg_actcomp.apis.checks.HookConfigError` (a ``ValueError``) naming the key and the value.

    Args:
        method (str): ``'hosvd'``, ``'svd'``, ``'gradfilt'`` (Gradient Filter, Yang et al., CVPR 2023:
            each conv keeps its input summed over patches, see ``patch_size``; unlike HOSVD/SVD, whose
            input gradients are exact, its input gradient is approximate too, taken from the output
            gradient averaged over patches; convolutions only: a chosen linear layer is an error naming it),
            or ``'none'`` (fine-tune the same layers without compression: the vanilla baseline). Defaults
            to ``'hosvd'``.
        explained_variance (float): ε in (0, 1]: each decomposed mode keeps the fewest components
            explaining this fraction of its energy. Ignored for ``'none'`` and ``'gradfilt'``. Defaults
            to 0.9 (the paper's is 0.8).
        patch_size (int): ``'gradfilt'`` only: ``R >= 1``; the output gradient is averaged over ``R x R``
            patches and each conv keeps its input summed over the matching ``(R stride)^2`` patches
            (the paper uses 2, 4 and 8; 1 is exact for a 1x1 stride-1 conv). Defaults to 2.
        num_layers (int, optional): fine-tune the last N layers in the order the inference forward
            (``mode='tensor'``: backbone + decode head, classifier ``conv_seg`` included) runs them, found
            by tracing; convolutions (``nn.Conv2d``), linear layers (``nn.Linear``, e.g. a transformer's
            MLPs, a Segmenter head's projections, Swin's ``qkv``) and attention projections count alike.
            An ``nn.MultiheadAttention`` (SegFormer's MiT, ViT, Segmenter, SETR) runs ``q_proj``,
            ``k_proj``, ``v_proj`` and ``out_proj`` in that order once made a ``LeanMultiheadAttention``;
            its query, key and value projections read rows of one ``in_proj_weight``, which trains whole,
            so choosing one chooses all three (up to two layers more than N). Auxiliary heads, dropped at
            inference, are never chosen, nor layers the model itself freezes (EMANet's bases).
        layers (list[str], optional): fine-tune exactly these conv, linear or attention projection paths
            instead, e.g. ``['decode_head.conv_seg', 'decode_head.bottleneck.conv']``,
            ``['backbone.layers.11.ffn.layers.1']`` or SegFormer's
            ``['backbone.layers.3.1.1.attn.attn.out_proj']``; an attention's ``q_proj``, ``k_proj`` and
            ``v_proj`` are named together. Give one of ``num_layers`` and ``layers``.
        freeze_others (bool): set ``requires_grad=False`` on every parameter outside the fine-tuned
            region, and keep the running statistics of BN layers whose parameters are all frozen
            (eval mode) so that frozen means unchanged. The region is the chosen layers plus the norm
            layer of a conv's mmcv ``ConvModule``, if any (a LayerNorm next to a linear layer stays
            frozen, though its input gradient still flows); BN elsewhere (e.g. a ResNet block's ``bn1``)
            stays as the config says (``norm_eval``). Defaults to True.
        lean_region (bool): make the rest of the fine-tuned region keep no full-size activation
            either: ReLUs keep a bit-packed mask, BNs on running statistics keep nothing (or a
            compressed normalised input when their affine weights train), dropout (``nn.Dropout``,
            mmcv's ``Dropout``) regenerates its mask, frozen convs and pooling keep no input;
            LayerNorms keep their normalised input quantized (``norm_input_bits``) and GELUs their
            derivative (``gelu_bits``). The region is each chosen layer's parent module (its ConvModule,
            residual block or head; a linear layer's MLP, transformer layer or head). Residual adds,
            reshapes and drop path (a factor per sample) keep nothing full-size; what a transformer
            region still keeps whole is its attention's: the softmax output and the query, key and value
            its products read. Input gradients stay exact, except through BNs on batch
            statistics, LayerNorms and GELUs. Not for 'none'; with 'gradfilt' a BN whose gamma trains
            on running statistics keeps its x_hat whole. False reproduces the paper's accounting (only
            the chosen layers' inputs compressed). Defaults to True.
        norm_input_bits (int, optional): with ``lean_region``, a region BN that trains on batch
            statistics (the config's default) keeps its input quantized to this many bits per element
            (one range per sample and channel; 1, 2, 4 or 8) instead of whole: its input and gamma
            gradients are then those of an input within half a quantization step of the true one.
            A region LayerNorm keeps its normalised input in as many bits (one range per sample and
            feature, and its inverse std per token), with gradients of the same kind. None keeps the
            inputs whole (exact gradients, 16x the bytes of 2 bits in float32). Its effect on learning:
            the ``hosvd-0.8`` (4 bits), ``-bn8``, ``-bn2`` and ``-exact-bn`` (None) rows of
            docs/finetune.md (convolutional networks: BNs). Defaults to 2.
        gelu_bits (int, optional): with ``lean_region``, a region GELU keeps its derivative quantized
            to this many bits per element (one range per sample; 1, 2, 4 or 8) instead of its whole
            input: its input gradient is the output gradient times a derivative within half a
            quantization step of the exact one. A key of its own because the same bits cost GELU far
            more: a norm's input gradient reads its kept input only in a term scaled by a mean over the
            normalised elements (a BN's is 2.5 % off at 2 bits), a GELU's is the output gradient times
            the kept derivative, element by element (a transformer MLP's input gradient is 15-17 % off
            at 2 bits, 3-5 % at 4 and 0.2 % at 8). None keeps the input whole (exact). Defaults to 4.
        freeze_region_norm_stats (bool): with ``lean_region``, run the region's BNs on their running
            statistics in training too (as ``norm_eval`` does for a backbone), so that they keep
            nothing of their input. This changes the forward (its effect on learning: the
            ``hosvd-0.8-frozen-bn`` row of docs/finetune.md), so it is off by default and BNs run as
            the config says. Defaults to False.
        precise_norm_batches (int): with ``freeze_region_norm_stats``, first replace those BNs'
            running statistics (the source task's exponential average) by their average over this many
            training batches of the new task (precise BN), once, when fine-tuning starts (not on
            resume: the checkpoint holds them). 0 keeps them as loaded. Defaults to 0.
        center (bool): the compressed layers keep their input's per-channel mean exactly and decompose
            only the rest, so that ranks follow the variation around the mean. Without it, ranks collapse
            to about 1 during fine-tuning and the weight gradients lose their direction
            (docs/grad_fidelity.md) and the run learns little (the ``hosvd-0.8-uncentred`` row of
            docs/finetune.md). Not for ``'none'`` or ``'gradfilt'``. Defaults to True; False is the
            paper's method.
        require_load_from (bool): fail at start unless the config loads a checkpoint (``load_from``
            or ``resume``): fine-tuning and calibration configs set it, so that a forgotten
            ``--cfg-options load_from=...`` cannot silently fine-tune a random network. Defaults to False.
        subspace (str): ``'exact'`` decomposes every step's inputs; ``'warm'`` (HOSVD) starts each
            layer's channel and spatial (a linear layer's token and channel) bases from the last step's
            (one subspace iteration, ranks still chosen so that every step meets ``explained_variance``)
            and decomposes exactly every ``subspace_batches``-th step; ``'frozen'`` (HOSVD) estimates each
            layer's channel and spatial bases from its first ``subspace_batches`` training batches and
            then only projects onto them (no eigendecomposition). The batch mode stays exact. The bases go
            into checkpoints, so a resumed run continues from the same ones. Their effect on learning and
            speed: the ``hosvd-0.8-warm-subspace`` and ``hosvd-0.8-frozen-subspace`` rows of
            docs/finetune.md. Only ``'exact'`` with ``'svd'`` and ``'gradfilt'``. Defaults to ``'exact'``.
        subspace_batches (int): ``M >= 1``: ``'frozen'``'s estimation batches, ``'warm'``'s refresh
            period. Defaults to 8.
        memory_budget_mib (float, optional): MiB for what the chosen layers keep of their inputs (their
            factors only: not the region's BNs, ReLUs, ...). When fine-tuning starts (not on resume: the
            checkpoint holds the choice) each layer's ``explained_variance`` is replaced by one from
            0.5-0.95 chosen on ``budget_batches`` training batches: the least summed weight-gradient
            error ``||dW_eps - dW||_F`` whose kept bytes (the largest over those batches) fit the budget.
            The choice is logged; a budget below the layers' cheapest bytes fails at start, saying the
            minimum. Only for 'svd'/'hosvd'. None (default) keeps ``explained_variance`` everywhere.
        budget_batches (int): ``>= 1`` calibration batches for ``memory_budget_mib``. Defaults to 2.
        truncate_batch (bool): HOSVD also truncates the batch mode of each input, as the paper's HOSVD
            does: the samples of a batch are then mixed, each keeping only its coordinates on the leading
            batch components, which loses more of the weight gradient than any other mode for the fewest
            bytes (docs/grad_fidelity.md, docs/finetune.md). False keeps the batch mode whole: every sample
            keeps its own coordinates in the truncated channel and spatial bases. SVD truncates only the
            batch mode and ignores this key. Defaults to False.
    """

    priority = 'VERY_HIGH'  # the model must be final before other hooks (EMA, ...) see it in before_run

    def __init__(self, method: str = 'hosvd', explained_variance: float = 0.9,
                 num_layers: Optional[int] = None, layers: Optional[Sequence[str]] = None,
                 freeze_others: bool = True, lean_region: bool = True,
                 freeze_region_norm_stats: bool = False, require_load_from: bool = False,
                 center: bool = True, precise_norm_batches: int = 0,
                 norm_input_bits: Optional[int] = 2, subspace: str = 'exact', subspace_batches: int = 8,
                 memory_budget_mib: Optional[float] = None, budget_batches: int = 2,
                 truncate_batch: bool = False, patch_size: int = 2, gelu_bits: Optional[int] = 4) -> None:
        try:
            self.region = FineTuneRegion(
                method=method, explained_variance=explained_variance, num_layers=num_layers, layers=layers,
                freeze_others=freeze_others, lean_region=lean_region,
                freeze_region_norm_stats=freeze_region_norm_stats, precise_norm_batches=precise_norm_batches,
                norm_input_bits=norm_input_bits, center=center, subspace=subspace,
                subspace_batches=subspace_batches, memory_budget_mib=memory_budget_mib,
                budget_batches=budget_batches, truncate_batch=truncate_batch, patch_size=patch_size,
                gelu_bits=gelu_bits)
        except ValueError as e:
            raise HookConfigError(f'ActivationCompressionHook: {e}') from None
        self.require_load_from = bool(require_load_from)

    def before_run(self, runner) -> None:
        """Do the surgery (:meth:`FineTuneRegion.apply`) on the bare model, re-wrap DDP, log the summary."""
        twins = [h for h in runner.hooks if isinstance(h, ActivationCompressionHook)]
        if len(twins) > 1:
            raise HookConfigError(f'ActivationCompressionHook is given {len(twins)} times in custom_hooks; '
                                  'give it once (use layers=[...] to choose several layers)')
        if self.require_load_from and not (runner.cfg.get('load_from') or runner.cfg.get('resume')):
            raise HookConfigError('ActivationCompressionHook(require_load_from=True): this config fine-tunes '
                                  'a trained network but load_from is not set; add '
                                  '--cfg-options load_from=CHECKPOINT (or --resume)')
        model = bare_model(runner)
        try:
            self.region.apply(model)
        except ValueError as e:
            raise HookConfigError(f'ActivationCompressionHook: {e}') from None
        if is_model_wrapper(runner.model) and self.region.freeze_others:
            # DDP records which parameters need gradients when it wraps the model: wrap again now that
            # the frozen ones are frozen, and drop the old wrapper (and its reducer hooks) first.
            old, runner.model = runner.model, None
            del old
            gc.collect()
            runner.model = runner.wrap_model(copy.deepcopy(runner.cfg.get('model_wrapper_cfg')), model)
        print_log(f'ActivationCompressionHook: {self.region.summary(model)}', logger='current')

    def before_train(self, runner) -> None:
        """When fine-tuning starts (not on resume: the checkpoint holds both), ``precise_norm_batches``
        re-estimates the region BNs' statistics, then ``memory_budget_mib`` chooses each layer's threshold
        on statistics as training will see them."""
        if runner.iter > 0:
            return
        self._precise_norm_stats(runner)
        self._fit_budget(runner)

    def _precise_norm_stats(self, runner) -> None:
        """``precise_norm_batches``: re-estimate the region BNs' running statistics on the training data."""
        norms = self.region.region_norms
        if not self.region.precise_norm_batches or not norms:
            return
        model = bare_model(runner)

        def forward(batch):
            model(**model.data_preprocessor(batch, True), mode='tensor')

        count = precise_norm_stats(model, norms, training_loader(runner), forward, self.region.precise_norm_batches)
        for norm in norms:  # each rank averaged its own batches
            all_reduce(norm.running_mean, op='mean')
            all_reduce(norm.running_var, op='mean')
        print_log(f'ActivationCompressionHook: running statistics of the {len(norms)} '
                  f'region BNs re-estimated over {count} training batches (per rank)', logger='current')

    def _fit_budget(self, runner) -> None:
        """``memory_budget_mib``: choose each layer's ``explained_variance`` (:meth:`FineTuneRegion.fit_budget`)
        on costs that every rank shares, so that all choose the same; log the choice."""
        if self.region.memory_budget_mib is None:
            return
        model = bare_model(runner)
        loss_of_batch = SegmentorLoss(model)
        optim_context = getattr(runner.optim_wrapper, 'optim_context', None)

        def run_batch(batch):
            with optim_context(model) if optim_context else contextlib.nullcontext():  # AMP: autocast
                loss = loss_of_batch(batch)
            loss.backward()

        costs = self.region.budget_costs(model, run_batch, training_loader(runner))
        try:
            self.region.choose_budget(costs_of_every_rank(costs))
        except ValueError as e:  # BudgetInfeasibleError
            raise HookConfigError(f'ActivationCompressionHook: {e}') from None
        print_log(f'ActivationCompressionHook: {self.region.budget_table}', logger='current')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """``subspace='warm'``/``'frozen'``: the layers' bases, so that a resumed run continues from them;
        ``memory_budget_mib``: the chosen thresholds, so that it keeps them."""
        states = self.region.subspace_states()
        if states:
            checkpoint[SUBSPACES_KEY] = states
        if self.region.budget_choice:
            checkpoint[BUDGET_CHOICE_KEY] = dict(self.region.budget_choice)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if checkpoint.get(SUBSPACES_KEY):
            self.region.load_subspace_states(checkpoint[SUBSPACES_KEY])
        if checkpoint.get(BUDGET_CHOICE_KEY) and self.region.memory_budget_mib is not None:
            self.region.load_budget_choice(checkpoint[BUDGET_CHOICE_KEY])

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # the train loop calls model.train() at its start and after each validation
        self.region.set_norms_eval()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        stats = self.region.stats()
        if stats is not None:
            runner.message_hub.update_scalars({f'train/actcomp_{k}': v for k, v in stats.items()})


def default_options() -> dict:
    """Every key of :class:`ActivationCompressionHook` with its default: what a bare hook line does."""
    return {k: p.default for k, p in inspect.signature(ActivationCompressionHook).parameters.items()}


def bare_model(runner):
    """The runner's model without its DDP wrapper."""
    return runner.model.module if is_model_wrapper(runner.model) else runner.model


def training_loader(runner):
    """A train dataloader of the hook's own, built from the config as the runner built its own: iterating
    the runner's would close its InfiniteSampler's shared index generator, ending training's data."""
    return runner.build_dataloader(copy.deepcopy(runner.cfg.train_dataloader), seed=runner.seed)


def costs_of_every_rank(costs: Dict[str, List[Cost]]) -> Dict[str, List[Cost]]:
    """The budget's cost tables combined over the ranks (each calibrated on its own batches): bytes the
    largest, errors the mean, so that every rank chooses the same thresholds. Unchanged on one process."""
    paths = list(costs)
    kept = torch.tensor([[c.kept_bytes for c in costs[p]] for p in paths], dtype=torch.float64)
    errors = torch.tensor([[c.error for c in costs[p]] for p in paths], dtype=torch.float64)
    all_reduce(kept, op='max')
    all_reduce(errors, op='mean')
    return {p: [Cost(c.explained_variance, int(k), float(e)) for c, k, e in zip(costs[p], kept[i], errors[i])]
            for i, p in enumerate(paths)}
