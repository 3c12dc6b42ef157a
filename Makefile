# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine ships these torch wheels on local disk; elsewhere override TORCH_SPEC (or set it empty).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.adadf-installed

.PHONY: install run test bench gpu-check clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH_SPEC)),$(PY) -m pip install -q $(TORCH_SPEC))
	$(PY) -m pip install -q -e ".[test,sweep]"
	$(PY) -m pip install -q --no-deps facenet-pytorch
	touch $@

install: $(STAMP)

run: install
	$(PY) run.py $(ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/throughput.py $(ARGS)

# One GPU, about 8 minutes: CUDA-only tests, throughput per pipeline (fp32, AMP bf16), 3-epoch RAF-size runs
# (per pipeline x precision on CUDA), aug ops per batch, the step eager vs captured.
# Anywhere, in a minute: make gpu-check ARGS="--quick --json out.json"
gpu-check: install
	$(PY) benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
