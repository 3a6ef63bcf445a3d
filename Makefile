# Two commands on a fresh machine with Python >= 3.11 and make:
#   make run    set up and run the main job on the embedded default (tiny preset)
#   make test   set up and pass the tests
# (make lint runs the pinned ruff over the tree; CI runs it before the tests.)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Every install is held to the tested versions in constraints.txt (CONSTRAINTS= resolves afresh).
CONSTRAINTS ?= constraints.txt
PIP := $(PY) -m pip install --quiet --disable-pip-version-check $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# The tests' torch is the CPU build, named here as pyproject's version with the +cpu local
# label, so that neither the machine's pip settings nor an index can substitute the CUDA build
# (gigabytes of it, which PyPI serves for plain torch==X on Linux); TORCH_INDEX serves it.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH := $(shell sed -n 's/.*"torch==\([^"]*\)".*/\1/p' pyproject.toml)+cpu

.PHONY: run test dev lint bench gallery paper clean

$(VENV)/.core: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) --no-deps --index-url $(TORCH_INDEX) "torch==$(TORCH)"
	$(PIP) -e '.[test]'
	touch $@

$(VENV)/.lint: $(VENV)/.core
	$(PIP) -e '.[dev]'
	touch $@

$(VENV)/.dev: $(VENV)/.test $(VENV)/.lint
	touch $@

run: $(VENV)/.core
	$(VENV)/bin/dynsys verify

test: $(VENV)/.test
	$(PY) -m pytest -q -n auto --dist loadfile

dev: $(VENV)/.dev  # the test extras and the pinned linter

lint: $(VENV)/.lint  # the pinned ruff with pyproject.toml's rules, on the whole tree
	$(VENV)/bin/ruff check .

bench: $(VENV)/.test
	$(PY) experiments/bench_generate.py
	$(PY) experiments/bench_prefix_step.py
	$(PY) experiments/bench_dynamics.py
	$(PY) experiments/bench_markov.py
	$(PY) experiments/profile_decode.py

gallery: $(VENV)/.core  # docs/results.md's figures: those of `make run`
	$(VENV)/bin/dynsys verify
	mkdir -p docs/gallery && cp runs/verify/*/figures/*.png docs/gallery/

paper: $(VENV)/.core
	for e in e1 e2 e3 e4 e5 e6 e7 e8 e9; do $(VENV)/bin/dynsys run $$e --scale paper || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache
