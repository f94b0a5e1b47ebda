# Two-command quick start: `make demo` and `make test` (both create .venv on first use).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned here because this machine serves exactly these wheels; override for another CUDA/CPU build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

# What `make demo` leaves, and the toy detector `make app` fine-tunes from it once (about 15 s).
DEMO_PRETRAIN := demo_output/pretrain/checkpoint-1.pth
DEMO_DETECTOR := demo_output/finetune/checkpoint-min_val_loss.pth
APP_ARGS ?=

.PHONY: setup test test-fast demo app lint bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -r requirements.txt pytest ruff validators requests
	# the package with the web app's extra (Gradio, gradio_client, playwright for the browser test)
	$(PY) -m pip install --quiet -e '.[app]'
	# Last, without dependencies (pip then skips its conflict check, so no red resolver ERROR): FACER (optional
	# parsing backend) without its GUI opencv / notebook pins, and MTCNN for FAS preprocessing (its wheel ships
	# the P/R/O-Net weights) without its old torch pins
	$(PY) -m pip install --quiet --no-deps pyfacer==0.0.5 facenet-pytorch==2.6.0
	touch $@

# The whole suite (CI runs it); test-fast leaves out the tests marked slow (subprocesses, process pools,
# DDP ranks, scripts, multi-epoch runs). Both print a progress line with an estimate every 30 s.
test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(PY) -m fsvfm.demo

$(DEMO_PRETRAIN):
	$(MAKE) demo

$(DEMO_DETECTOR): $(DEMO_PRETRAIN)
	$(PY) -m fsvfm.demo --stage finetune

# The web app on http://127.0.0.1:7860 with the demo's detector and pre-training checkpoints.
app: setup $(DEMO_DETECTOR)
	$(PY) -m fsvfm.app --detector $(DEMO_DETECTOR) --pretrained $(DEMO_PRETRAIN) $(APP_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo_output .pytest_cache
