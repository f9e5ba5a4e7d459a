# Two commands do everything on a fresh machine with python3, make and git:
#   make run   - set up, then the whole pipeline on the quickstart: dataset (`dvc repro`),
#                WGAN-GP, BEGAN and ProGAN on local Ray, metrics, MLflow registry
#   make test  - set up, then run the test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
# A machine whose pip is configured with a find-links folder (e.g. a local CPU torch wheel)
# gets it here too; read at run time so no committed file names a machine's path.
FIND_LINKS := $(shell python3 -m pip config get global.find-links 2>/dev/null)
UV_FIND_LINKS := $(foreach d,$(FIND_LINKS),--find-links $(d))
STAMP := $(VENV)/.installed

.PHONY: setup run test bench lint lock clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	# uv resolves in seconds where pip's resolver backtracks for >10 minutes on this set.
	# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as here) nothing caches .pyc, and
	# every Ray worker and CLI process would recompile torch, ray and mlflow on import.
	VIRTUAL_ENV=$(abspath $(VENV)) $(UV) pip install --quiet --compile-bytecode \
		$(UV_FIND_LINKS) -r requirements.lock -e '.[dev]'
	touch $(STAMP)

# The venv's bin goes first on PATH so dvc's stage commands find `ganforge`.
run: export PATH := $(abspath $(VENV))/bin:$(PATH)
run: setup
	ganforge pipeline run configs/pipeline/quickstart.yaml

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) -m benchmarks.run

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Re-pin every dependency. torch is pinned without a local version tag so a GPU machine
# takes the registry's CUDA build of the same release. --upgrade-package torch: the lock's own
# `torch==2.13.0` would otherwise be kept as the registry's CUDA wheel, and its nvidia-*
# dependencies pinned with it, where the find-links folder holds a CPU wheel.
lock:
	test -x $(UV) || (python3 -m venv $(VENV) && $(PY) -m pip install --quiet uv==$(UV_VERSION))
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 $(UV_FIND_LINKS) --upgrade-package torch \
		--no-header -o requirements.lock
	sed -i 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache benchmarks/results
