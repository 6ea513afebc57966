# Two entry points for a fresh machine: `make test` (the whole suite) and `make serve` (the service on
# the embedded demo preset). Both build the virtual environment from pyproject.toml first. `make bench`
# measures the served stack against the eager baseline (benchmarks/run_benchmarks.py).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3
BUGSINK_VENV ?= .venv-bugsink
# How local_bugsink (tests, `make serve`) finds that environment wherever BUGSINK_VENV puts it.
export BUGSINK_PYTHON ?= $(abspath $(BUGSINK_VENV))/bin/python

.PHONY: test serve bench env bugsink-env text-normalizer lint clean

env: $(VENV)/.installed

# torch is installed first and on its own: 2.13.0 is the CPU wheel on this kind of machine, and once it
# is there, the `torch==2.13.0` pin in pyproject.toml keeps pip from pulling a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[test,bench]"  # the suite runs a benchmark smoke test
	touch $@

# Bugsink, the Sentry-protocol server that tests (and `make serve` without SENTRY_DSN) report to, has an
# environment of its own: it brings Django, gunicorn and top-level packages named `events`, `api`, `users`,
# ... The requirements file pins all of it (hence --no-deps); `prepare` builds the migrated template
# database, so starting a server takes ~0.5 s. local_bugsink/ itself is standard library only.
bugsink-env: $(BUGSINK_VENV)/.installed

$(BUGSINK_VENV)/.installed: local_bugsink/requirements.txt local_bugsink/bootstrap.py
	$(SYSTEM_PYTHON) -m venv $(BUGSINK_VENV)
	echo '*' > $(BUGSINK_VENV)/.gitignore
	$(BUGSINK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BUGSINK_VENV)/bin/python -m pip install --quiet --no-deps -r local_bugsink/requirements.txt
	$(BUGSINK_VENV)/bin/python -m pip check
	$(BUGSINK_VENV)/bin/python -m local_bugsink --bugsink-python $(abspath $(BUGSINK_VENV))/bin/python prepare
	touch $@

# The text normaliser's Chinese FSTs, built with the official options (~2 s) into build/text_normalizer/,
# from where the tests and the service load them (indextts2/frontend/normalizer.py); a no-op once there.
text-normalizer: env
	$(PYTHON) -m indextts2.frontend.normalizer

test: env bugsink-env text-normalizer
	$(VENV)/bin/ruff check .
	$(PYTHON) -m pytest

# The service on a demo preset: builds build/<preset> once (checkpoint + exported model repository), starts
# the local tritonserver on it and serves the API on 127.0.0.1:8000 (HOST/PORT, SENTRY_DSN, ... apply).
# PRESET=demo (IndexTTS-2.0, the default) or PRESET=demo-2.5 (IndexTTS-2.5).
PRESET ?= demo
serve: env bugsink-env text-normalizer
	$(PYTHON) -m orchestrator.demo --preset $(PRESET)

# The served stack (tritonserver + orchestrator) against the eager one-request-at-a-time baseline, on the
# demo and small presets at concurrency 1, 4, 16, 64, and streaming (~50 min on 2 CPU cores); results in benchmarks/results/.
# BENCH_ARGS passes options through, e.g. make bench BENCH_ARGS="--presets demo --concurrency 1 8".
# IndexTTS-2.5: make bench BENCH_ARGS="--presets demo-2.5 --concurrency 1 16".
bench: env bugsink-env text-normalizer
	$(PYTHON) -m benchmarks.run_benchmarks $(BENCH_ARGS)

lint: env
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(BUGSINK_VENV) build
