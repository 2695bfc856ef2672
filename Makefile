# Two commands for a newcomer:  `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use. torch is installed FIRST and pinned to the CPU build that this
# kind of machine carries; a bare `pip install -e .` would otherwise pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.grndiff-installed

.PHONY: install lint test test-fast demo bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)   # ruff comes with the test extra; installed here too for a .venv made before it did
	$(PY) -m ruff --version >/dev/null 2>&1 || $(PY) -m pip install --quiet -c constraints.txt ruff
	$(PY) -m ruff check .

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)   # the suite without the end-to-end (subprocess, notebook) tests marked slow
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(VENV)/bin/grndiff demo --out runs/demo

bench-quick: $(STAMP)
	$(PY) benchmarks/kernel.py --quick

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
