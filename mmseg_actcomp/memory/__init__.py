"""Measure the activation memory of fine-tuning: what autograd keeps for backward, per layer and for the
whole model, split into the fine-tuned region and the rest (see :mod:`.region` for the rule).

Torch only: saved-tensor recording (:mod:`.saved`), the region split (:mod:`.region`), per-layer probes
(:mod:`.layers`), a step's measurement (:mod:`.measure`); reports and plots on top (:mod:`.report`,
:mod:`.pareto`). Measuring an mmseg config (config, checkpoint, dataloader) is
:mod:`mmseg_actcomp.apis.segmentor`."""
from .layers import LayerProbe, LayerStep
from .measure import StepMemory, measure_step, measure_steps
from .region import REGION_RULE, in_region, region_modules, summarize_saved
from .report import build_report, format_report, format_summary, write_report
from .saved import SavedTensor, SavedTensorRecorder, storage_of

__all__ = [
    'LayerProbe', 'LayerStep', 'StepMemory', 'measure_step', 'measure_steps', 'REGION_RULE', 'in_region',
    'region_modules', 'summarize_saved', 'build_report', 'format_report', 'format_summary', 'write_report',
    'SavedTensor', 'SavedTensorRecorder', 'storage_of'
]
