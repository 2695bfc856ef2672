# Two commands for a newcomer:  `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use. torch is installed FIRST and pinned to the CPU build that this
# kind of machine carries; a bare `pip install -e .` would otherwise pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.grndiff-installed
DOCS_STAMP := $(VENV)/.grndiff-docs-installed

.PHONY: install lint test test-fast demo bench-quick docs clean

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

# The API reference and the tutorials (rendered with their committed outputs, never executed) as HTML
# in docs/_build/html; offline once the docs extra is installed. Warnings are errors (CI runs it).
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -E -b html docs docs/_build/html

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache docs/_build docs/tutorials
