#!/usr/bin/env bash
# The README's demo: real fine-tuning of a pretrained network with HOSVD-compressed activations on the
# bundled sample data, on the CPU, through mmseg's own training entry point (tools/train.py).
#   1. train the decode head of DeepLabV3-MobileNetV2-d8 on the frozen ImageNet backbone (the sample has
#      no VOC-trained checkpoint: this stands in for the paper's full training);
#   2. calibrate: train only the classifier conv_seg from that checkpoint;
#   3. fine-tune the paper's last 10 layers with HOSVD, explained variance 0.8, from the calibrated one;
#   4. measure activation memory of step 3 on real batches; print mIoU before (2) and after (3).
# Run it through `make demo`, which first installs the stack, converts the weights and writes the data.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-work_dirs/demo}
S=configs/sample
HEAD=$S/deeplabv3_mv2-d8_head-none_1xb4-80it_vocsample-128x128.py
CALIB=$S/deeplabv3_mv2-d8_calib-conv_seg_1xb4-40it_vocsample-128x128.py
FINETUNE=$S/deeplabv3_mv2-d8_hosvd-0.8-10L_1xb4-40it_vocsample-128x128.py
start=$(date +%s)
last() { "$PY" -c "import sys; print(open(sys.argv[1] + '/last_checkpoint').read().strip())" "$1"; }

echo "== 1/4 train the decode head on the frozen ImageNet backbone"
"$PY" tools/train.py "$HEAD" --work-dir "$WORK/head"
echo "== 2/4 calibrate conv_seg"
"$PY" tools/train.py "$CALIB" --work-dir "$WORK/calibrate" --cfg-options load_from="$(last "$WORK/head")"
echo "== 3/4 fine-tune the last 10 layers with HOSVD (explained variance 0.8)"
"$PY" tools/train.py "$FINETUNE" --work-dir "$WORK/finetune" --cfg-options load_from="$(last "$WORK/calibrate")"
echo "== 4/4 activation memory of the fine-tuning step, on real batches"
"$PY" tools/measure_activation_memory.py "$FINETUNE" --checkpoint "$(last "$WORK/finetune")" --num-batches 3 \
    --out-dir "$WORK/memory" --log "$WORK/finetune"
"$PY" - "$WORK" "$start" <<'PY'
import sys, time
from mmseg_actcomp.memory.pareto import read_miou
work, start = sys.argv[1], float(sys.argv[2])
print(f'\nmIoU on the sample val split: after calibration {read_miou(work + "/calibrate"):.2f}, '
      f'after HOSVD fine-tuning {read_miou(work + "/finetune"):.2f}   ({time.time() - start:.0f} s in all)')
PY
