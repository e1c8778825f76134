# torch-streamer: set-up and checks. Every target creates $(VENV) when it is missing and installs
# what it needs, once: torch first, then the project with the extras of that target, at the
# exact versions of requirements/pins.txt. `make demo` installs only what the demo needs; a later
# `make test` adds the rest.
PYTHON ?= python3
VENV ?= .venv
# the CPU wheel; an unpinned torch can pull a multi-GB CUDA build
TORCH_SPEC ?= torch==2.13.0
PINS := requirements/pins.txt
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet
# what every level needs: a venv, a current pip, torch
BASE_STAMP := $(VENV)/.installed-base
# one stamp per set of extras
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench
DOCS_STAMP := $(VENV)/.installed-docs
# the sdist of torch-streamer 0.0.2, for the compatibility test
COMPAT := $(VENV)/compat/torch_streamer-0.0.2.tar.gz

.PHONY: help venv test test-serving test-thorough lint check demo bench docs clean

help:
	@echo "make test           run the whole test suite (default hypothesis profile)"
	@echo "make test-serving   a real Triton server streams 100+ sequences (tests/serving)"
	@echo "make test-thorough  the same with >= 1000 examples per property"
	@echo "make lint           ruff check and mypy src"
	@echo "make check          lint and test, as CI runs them"
	@echo "make demo           stream the built-in filter bank, verify it, print latency and speed, draw demo.png"
	@echo "make bench          the benchmark suite (benchmarks/run.py): table, JSON and PNG in benchmarks/results"
	@echo "make docs           build the documentation strictly (site/)"

# everything the tests need
venv: $(TEST_STAMP) $(COMPAT)

$(BASE_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "$(TORCH_SPEC)"
	touch $@

$(DEMO_STAMP): $(BASE_STAMP) pyproject.toml $(PINS)
	$(PIP) -c $(PINS) -e ".[demo]"
	touch $@

# bench: the peer libraries, which tests/test_bench_peers.py checks against the offline models;
# then the published models that tests/real streams as shipped (no deps: see the file)
REAL := requirements/real-models.txt
$(TEST_STAMP): $(BASE_STAMP) pyproject.toml $(PINS) $(REAL)
	$(PIP) -c $(PINS) -e ".[dev,onnx,serve,cli,audio,demo,bench]"
	$(PIP) --no-deps -r $(REAL)
	touch $@

$(BENCH_STAMP): $(BASE_STAMP) pyproject.toml $(PINS)
	$(PIP) -c $(PINS) -e ".[cli,audio,bench]"
	touch $@

$(DOCS_STAMP): $(BASE_STAMP) pyproject.toml $(PINS)
	$(PIP) -c $(PINS) -e ".[docs]"
	touch $@

$(COMPAT): $(BASE_STAMP)
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: torch-streamer==0.0.2 -d $(VENV)/compat

# tests/test_compat_0_0_2.py reads the sdist (from any VENV)
test: $(TEST_STAMP) $(COMPAT)
	TORCHSTREAMER_COMPAT_SDIST=$(abspath $(COMPAT)) $(BIN)/python -m pytest -q

# the real Triton server (tests/serving) in its own venv: the server's Python-backend stub takes
# its packages from the first python3 on PATH and needs NumPy < 2 there (requirements/serving.txt)
SERVING_VENV ?= .venv-serving
SERVING_STAMP := $(SERVING_VENV)/.installed
SERVING_PIP := $(SERVING_VENV)/bin/python -m pip install --quiet
$(SERVING_STAMP): pyproject.toml requirements/serving.txt
	test -x $(SERVING_VENV)/bin/python || $(PYTHON) -m venv $(SERVING_VENV)
	$(SERVING_PIP) --upgrade pip
	$(SERVING_PIP) "$(TORCH_SPEC)"
	$(SERVING_PIP) -r requirements/serving.txt
	$(SERVING_PIP) --no-deps -e .
	touch $@

test-serving: $(SERVING_STAMP)
	$(SERVING_VENV)/bin/python -m pytest -q tests/serving

test-thorough: $(TEST_STAMP) $(COMPAT)
	TORCHSTREAMER_COMPAT_SDIST=$(abspath $(COMPAT)) HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q

# the test set-up: mypy reads the types of the extras the source imports
lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src

check: lint test

demo: $(DEMO_STAMP)
	$(BIN)/python -m torchstreamer.demo --picture demo.png

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) $(SERVING_VENV) build dist site src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis benchmarks/.legacy-venv
