# torch-streamer: set-up and checks. `make test` and `make demo` create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
# the CPU wheel; an unpinned torch can pull a multi-GB CUDA build
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv test test-thorough lint check demo bench docs clean

help:
	@echo "make test           run the whole test suite (default hypothesis profile)"
	@echo "make test-thorough  the same with >= 1000 examples per property"
	@echo "make lint           ruff check and mypy src"
	@echo "make check          lint and test, as CI runs them"
	@echo "make demo           stream the built-in filter bank, verify it, print latency and speed, draw demo.png"
	@echo "make bench          the benchmark suite (benchmarks/run.py): table, JSON and PNG in benchmarks/results"
	@echo "make docs           build the documentation strictly (site/)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,onnx,cli,audio,demo,bench]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src

check: lint test

demo: $(STAMP)
	$(BIN)/python -m torchstreamer.demo --picture demo.png

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/run.py

docs: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
