# Two entry points for a fresh machine (Python 3.11+):
#   make serve  - create .venv, install, start the service with the bundled models (models/)
#   make demo   - create .venv, install, train a small LSTM on the temporal-order task
#   make test   - create .venv, install, run the test suite (no torch, no GPU needed)
#   make lint   - ruff over the whole tree (rules in pyproject.toml)
#   make gpu-check - the GPU tests and GPU benchmarks in one run (<= 8 min): gpu-check/gpu_check.{json,md};
#                    WHEELS=dir installs from a local wheelhouse (no network); exit 3 means no CUDA device
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?= -q

.PHONY: setup setup-reference setup-gpu serve demo test test-reference lint bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,scripts,fast]'
	touch $@

setup: $(VENV)/.installed

# torch and onnxruntime are test-time references only (live parity tests, benchmarks).
$(VENV)/.reference: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev,scripts,fast,reference]'
	touch $@

setup-reference: $(VENV)/.reference

HOST ?= 127.0.0.1
PORT ?= 8000

serve: setup
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

demo: setup
	$(BIN)/python -m scripts.demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-reference: setup-reference
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "torch or not torch"

lint: setup
	$(BIN)/ruff check .

PIP_SOURCE := $(if $(WHEELS),--no-index --find-links $(WHEELS),)

$(VENV)/.gpu: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(PIP_SOURCE) -e '.[dev,scripts,fast,gpu]'
	touch $@

setup-gpu: $(VENV)/.gpu

gpu-check: setup-gpu
	$(BIN)/python -m scripts.gpu_check --out gpu-check

bench: setup-reference
	$(BIN)/python -m scripts.bench_core --cell all

clean:
	rm -rf $(VENV) .pytest_cache gpu-check
