# The two commands of the README:
#   make demo   set up everything, then train on the bundled sample data and evaluate
#   make test   set up everything, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
SAMPLE_SEED ?= 0

.PHONY: install sample-data demo test
install:
	bash tools/install.sh

sample-data: install
	$(PY) tools/make_sample_voc.py --out data/sample_voc --seed $(SAMPLE_SEED)

demo: sample-data
	$(PY) tools/train.py configs/sample/deeplabv3_r18-d8_1xb2-20it_vocsample-128x128.py \
		--work-dir work_dirs/demo

test: install
	$(PY) -m pytest tests
