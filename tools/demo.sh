#!/usr/bin/env bash
# The README's demo: HOSVD-compressed fine-tuning of a pretrained network that visibly learns, on the CPU,
# through mmseg's own training entry point (tools/train.py), on the learning benchmark's data
# (tools/make_sample_voc.py --data finetune) and configs (configs/finetune/):
#   1. start: train the decode head of DeepLabV3-MobileNetV2-d8 on the *source* task (ARC 2017 objects) on
#      the frozen ImageNet backbone (stands in for the paper's Cityscapes-trained network);
#   2. calibrate conv_seg on the *target* task (the VOC photo's objects): mIoU "before";
#   3. fine-tune the paper's last 10 layers with HOSVD at explained variance EPS for ITERS iterations (the
#      hook's defaults otherwise: the batch mode kept whole, region BNs in 2 bits, the convs' input means
#      kept exactly): mIoU "after";
#   4. measure the activation memory of step 3 on real batches;
#   5. draw val images | ground truth | prediction before | after into predictions.png.
# One line per stage here; mmengine's logs go to WORK/*.log. Run it through `make demo`, which first
# installs the stack, converts the weights and writes the data.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-work_dirs/demo}
EPS=${EPS:-0.9}  # the hook's default, chosen on the learning benchmark (docs/finetune.md)
ITERS=${ITERS:-120}  # the benchmark runs 100; a few more show the gain in about ten minutes
SEED=${SEED:-0}  # data order and augmentation of every stage, so that a rerun repeats the figures
C=configs/finetune
START=$C/deeplabv3_mv2-d8_head-source_1xb8-150it_vocfinetune-128x128.py
CALIB=$C/deeplabv3_mv2-d8_calib-conv_seg_1xb8-100it_vocfinetune-128x128.py
FINETUNE=$C/deeplabv3_mv2-d8_hosvd-0.8-10L_1xb8-100it_vocfinetune-128x128.py
mkdir -p "$WORK"
begin=$(date +%s)
last() { "$PY" -c "import sys; print(open(sys.argv[1] + '/last_checkpoint').read().strip())" "$1"; }
miou() { "$PY" -c "import sys; from mmseg_actcomp.memory.pareto import read_miou; print(f'{read_miou(sys.argv[1]):.2f}')" "$1"; }
stage() {  # stage NAME TITLE COMMAND...: run quietly into WORK/NAME.log, say how long it took
  local name=$1 title=$2 t=$(date +%s)
  shift 2
  printf '%-74s' "$title"
  if ! "$@" > "$WORK/$name.log" 2>&1; then
    echo " FAILED; the end of $WORK/$name.log:"; tail -n 30 "$WORK/$name.log"; exit 1
  fi
  printf ' %4d s\n' $(( $(date +%s) - t ))
}

stage start "1/5 train the decode head on the source task (150 it)" \
  "$PY" tools/train.py "$START" --work-dir "$WORK/start" --cfg-options randomness.seed="$SEED"
stage calibrate "2/5 calibrate conv_seg on the target task (100 it)" \
  "$PY" tools/train.py "$CALIB" --work-dir "$WORK/calibrate" --cfg-options load_from="$(last "$WORK/start")" \
  randomness.seed="$SEED"
stage finetune "3/5 fine-tune the last 10 layers, HOSVD eps $EPS ($ITERS it)" \
  "$PY" tools/train.py "$FINETUNE" --work-dir "$WORK/finetune" --cfg-options load_from="$(last "$WORK/calibrate")" \
  randomness.seed="$SEED" custom_hooks.0.explained_variance="$EPS" train_cfg.max_iters="$ITERS" train_cfg.val_interval="$ITERS" \
  default_hooks.checkpoint.interval="$ITERS"
stage memory "4/5 measure the activation memory of that step (3 batches)" \
  "$PY" tools/measure_activation_memory.py "$FINETUNE" --checkpoint "$(last "$WORK/finetune")" \
  --num-batches 3 --out-dir "$WORK/memory" --log "$WORK/finetune" --cfg-options custom_hooks.0.explained_variance="$EPS"
stage predictions "5/5 draw predictions before and after" \
  "$PY" tools/analysis_tools/show_predictions.py "$FINETUNE" "$(last "$WORK/calibrate")" "$(last "$WORK/finetune")" \
  --titles 'before (calibrated)' 'after HOSVD fine-tuning' --out "$WORK/predictions.png"

"$PY" tools/analysis_tools/demo_summary.py "$WORK" --seconds $(( $(date +%s) - begin )) ${DOCS:+--docs "$DOCS"}
