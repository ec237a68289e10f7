# Two commands matter: `make demo` and `make test`. Both set up .venv first if needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test bundle regenerate regenerate-model demo-results model-reports monailabel-env monailabel-app clean onnx engine-dice bench bench-dice

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt 2> >(grep -v "^WARNING: Location" >&2)
	$(PY) -m pip install -q --no-deps -e . 2> >(grep -v "^WARNING: Location" >&2)
	touch $@

install: $(STAMP)

## make demo: set up, then segment a synthetic site the shipped model never trained on (writes demo_out/)
demo: $(STAMP)
	$(PY) -m mcdrl.demo --out demo_out

## make test: set up, then the whole suite (includes the slow MONAI Label and torchrun tests)
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

## make bundle: the bundle as it is shared, standing on its own (bundle/ plus the mcdrl package in scripts/)
## -> dist/mcdrl_endoscopy_segmentation/ and dist/mcdrl_endoscopy_segmentation.zip
bundle: $(STAMP)
	$(PY) -m mcdrl.deploy.package --out dist

clean:
	rm -rf demo_out bundle/runs bundle/eval dist

## make regenerate: rebuild every shipped binary (demo CLIP, dictionary, demo model, large_files.yml, the sites figure) from scratch,
## then every report of the shipped model; make regenerate-model keeps the shipped CLIP and dictionary and retrains the model only
BUNDLE_RUN := $(PY) -m monai.bundle run
LOGCONF := --logging_file bundle/configs/logging.conf
regenerate: $(STAMP)
	$(BUNDLE_RUN) pretrain --config_file bundle/configs/pretrain_clip.json $(LOGCONF)
	$(BUNDLE_RUN) build_dictionary --config_file bundle/configs/dictionary.json $(LOGCONF)
	$(MAKE) regenerate-model
	$(PY) -m mcdrl.synthetic --figure bundle/docs/figures/synthetic_sites.png

## the training data: sites A-E, the first 160 cases per site split 80/20 (the validation split every report uses),
## plus 440 more distinct training scenes per site
data/synthetic/datalist.json: | $(STAMP)
	$(PY) -m mcdrl.synthetic --out data/synthetic --sites A B C D E --n 160 --extra_training 440 --seed 0
data/heldout_F/datalist.json: | $(STAMP)
	$(PY) -m mcdrl.synthetic --out data/heldout_F --sites F --n 160 --seed 1 --split 1.0 0.0
## the held-out site's own frames for the oracle rows (other scenes than data/heldout_F: seed 2)
data/oracle_F/datalist.json: | $(STAMP)
	$(PY) -m mcdrl.synthetic --out data/oracle_F --sites F --n 600 --seed 2 --split 0.8 0.2

regenerate-model: $(STAMP)
	rm -rf data/synthetic bundle/runs/train bundle/models/model.pt bundle/models/previous
	$(MAKE) data/synthetic/datalist.json
	$(BUNDLE_RUN) training --config_file bundle/configs/train.json --meta_file bundle/configs/metadata.json $(LOGCONF)
	$(BUNDLE_RUN) calibrate_readout --config_file "['bundle/configs/inference.json','bundle/configs/site_profile.json']" $(LOGCONF)
	$(PY) -m mcdrl.deploy.shipped bundle
	$(MAKE) demo-results model-reports

## MONAI Label (its own venv: pydicom<3, numpy 1.x) and an app folder holding this bundle
monailabel-env: ; $(PYTHON) scripts/monailabel_setup.py env
monailabel-app: ; $(PYTHON) scripts/monailabel_setup.py app

## make demo-results: the shipped model's Dice on its training sites' validation split and on held-out site F, its
## training time and presence threshold, the demo's per-case Dice, and the demo CLIP's vocabulary -> bundle/docs/results/
EVAL := $(BUNDLE_RUN) --config_file "['bundle/configs/train.json','bundle/configs/evaluate.json']" $(LOGCONF)
demo-results: $(STAMP) data/synthetic/datalist.json data/heldout_F/datalist.json
	$(EVAL) --output_dir bundle/eval/train_sites --eval_split validation
	$(EVAL) --output_dir bundle/eval/heldout_F --dataset_dir data/heldout_F --eval_split training
	$(PY) -m mcdrl.demo --out demo_out --site F --n 8 --seed 2026
	mkdir -p bundle/docs/results && cp demo_out/summary.json bundle/docs/results/demo.json
	$(PY) -m mcdrl.evaluation.clip_probe --clip_weights bundle/models/clip/mcdrl-demo-vit.safetensors --out bundle/docs/results/clip_vocabulary.json
	$(PY) -c "import json,csv,torch; r={n: dict(csv.reader(open(f'bundle/eval/{n}/metrics.csv'))) for n in ('train_sites','heldout_F')}; r['training']=json.load(open('bundle/runs/train/training_time.json')); r['presence_threshold']=float(torch.load('bundle/models/model.pt', weights_only=True)['presence_threshold']); json.dump(r, open('bundle/docs/results/demo_model.json','w'), indent=1); print(r)"

## make model-reports: the shipped model against a MONAI UNet trained for the same wall time (one epoch of the shipped
## recipe timed here, now, x its epochs), and under shifts and at a
## new site (with the oracle rows), its confounder report and site profiles -> bundle/docs/results/compare.*,
## robustness.*, confounder_readout.*, site_profile.*
model-reports: $(STAMP) data/synthetic/datalist.json data/heldout_F/datalist.json data/oracle_F/datalist.json
	$(PY) -m mcdrl.evaluation.compare --oracle data/oracle_F/datalist.json --time_shipped_epoch
	$(PY) -m mcdrl.evaluation.robustness
	$(PY) -m mcdrl.evaluation.confounder_readout
	$(PY) -m mcdrl.evaluation.site_profile

## make onnx: the onnxruntime engine's graphs next to the weights (models/model.onnx, model.int8.onnx); the engine
## also exports them on first use, and again whenever model.pt changes
onnx: $(STAMP)
	$(PY) -m mcdrl.deploy.export onnx
	$(PY) -m mcdrl.deploy.export onnx --int8

## make engine-dice: the shipped model's Dice with each engine (torch, onnxruntime, onnxruntime-int8) on the training
## sites' validation split and on held-out site F -> bundle/eval/engine_<engine>/ (read by make bench)
ENGINES := torch onnxruntime onnxruntime-int8
engine-dice: $(STAMP) data/synthetic/datalist.json data/heldout_F/datalist.json
	for e in $(ENGINES); do \
	  $(EVAL) --engine $$e --output_dir bundle/eval/engine_$$e/train_sites --eval_split validation && \
	  $(EVAL) --engine $$e --output_dir bundle/eval/engine_$$e/heldout_F --dataset_dir data/heldout_F --eval_split training || exit 1; \
	done

## make bench: every figure of bundle/docs/results/bench.md (the engines' Dice, then the timings, interleaved)
bench: engine-dice
	$(PY) -m mcdrl.evaluation.speed

## make bench-dice: after a retrain of the same network, the engines' Dice again, into bench.* with its timings kept
## (they run on random weights); the page says when the Dice were read. A changed network needs the full make bench;
## a report that records its network fingerprint refuses --dice-only when the configs build another network.
bench-dice: engine-dice
	$(PY) -m mcdrl.evaluation.speed --dice-only
