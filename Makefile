# Two commands on a fresh machine with Python >= 3.11 and make:
#   make run    set up and run the main job on the embedded default (tiny preset)
#   make test   set up and pass the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test bench gallery paper clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) -e '.[test]'
	touch $@

run: $(VENV)/.core
	$(VENV)/bin/dynsys verify

test: $(VENV)/.test
	$(PY) -m pytest -q -n auto --dist loadfile

bench: $(VENV)/.test
	$(PY) experiments/bench_generate.py
	$(PY) experiments/bench_prefix_step.py
	$(PY) experiments/bench_dynamics.py
	$(PY) experiments/bench_markov.py
	$(PY) experiments/profile_decode.py

gallery: $(VENV)/.core  # the README's figures: those of `make run`
	$(VENV)/bin/dynsys verify
	mkdir -p docs/gallery && cp runs/verify/*/figures/*.png docs/gallery/

paper: $(VENV)/.core
	for e in e1 e2 e3 e4 e5 e6 e7 e8 e9; do $(VENV)/bin/dynsys run $$e --scale paper || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
