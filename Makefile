# robopt developer entry points. Every target installs what is missing first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned first: an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
DEMO_OUT ?= out/demo
THREADS ?= 1

.PHONY: install demo test bench lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[all,dev]" "$(TORCH)"
	touch $(STAMP)

demo: install
	$(BIN)/robopt-compile zoo:visuomotor-cnn --target host --threads $(THREADS) -o $(DEMO_OUT) --force
	$(BIN)/robopt-bench $(DEMO_OUT) --runs 200 --threads $(THREADS)

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python -m robopt_compile.benchmarks --out docs/BENCHMARKS.md

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .ruff_cache
