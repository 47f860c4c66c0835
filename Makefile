# `make demo` and `make test` do all the set-up on a fresh machine (they create .venv as needed).
VENV ?= .venv
PY := $(VENV)/bin/python
# The machine's pip configuration may point at a local CPU-only torch wheel that cannot load PyPI's
# torchvision: install from PyPI as users do.
PIP := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: install demo test test-slow lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[all]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/unireplknet train --output runs/demo --overwrite

test: install
	$(VENV)/bin/ruff check src tests benchmarks
	UNIREPLKNET_REQUIRE_EXTRAS=1 $(PY) -m pytest -q -n 2 -rs $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache

# Every GPU measurement in one call (docs/benchmarks.md): tests, Table 1, model throughput, training step; one
# JSON + logs under $$OUT (default runs/gpu-check). No install step: the venv's python if there is one, else
# python3 (a GPU image with torch, triton, timm, pytest). GPU_CHECK_ARGS: e.g. --scale 1.5 --parts table1.
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check:
	PYTHONPATH=src $(if $(wildcard $(PY)),$(PY),python3) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)
