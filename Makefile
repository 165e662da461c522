# mtl - make help lists the targets. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
# What lint and type checks cover (CI runs the same through `make check`).
SRC := mtl_cli tests benchmarks

.DEFAULT_GOAL := help
.PHONY: help install demo test test-all lint check bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/mtl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The pinned CPU torch first: an unpinned one would pull gigabytes of CUDA packages.
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/mtl ## create .venv and install torch (CPU), mtl and its dev tools

demo: install ## train and evaluate the offline demo (MiniLM, packaged reviews), ~1 min
	$(BIN)/mtl train experiment=demo
	$(BIN)/mtl eval latest

# The default suite's tests are small (one torch thread each), so they run on every core (pytest-xdist);
# the slow ones train real models on every core themselves, so they run one at a time.
test: install ## the default test suite: everything but the `slow` tests (real-data training, benchmarks)
	$(BIN)/pytest -m "not slow" -n auto --durations=10

test-all: test ## the whole suite: the default one, then the `slow` tests (real-data tests skip without ../shared/data)
	$(BIN)/pytest -m slow --durations=10

lint: install ## ruff (lint and format check, no rewrite) and mypy
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/mypy $(SRC)

check: lint test-all ## lint + types + the whole suite, as CI runs them

bench: install ## throughput: mtl vs a hand-written loop and HF Trainer, as written and best configured (MiniLM, FDU-MTL; ~40 min on 2 AVX2 cores), writes bench.json
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

clean: ## remove .venv and caches (runs/ is kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build dist *.egg-info
