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
	$(BIN)/python -m pip install --quiet -e ".[tf]" "$(TORCH)" || \
	  echo "make: the [tf] extra (tensorflow-cpu, tf2onnx) did not install: TensorFlow sources and zoo:rt1-tiny are unavailable, their tests skip"
	touch $(STAMP)

# The trained Reacher visuomotor CNN: compile for this machine, check the engine drives the task
# as well as the original (20 seeded episodes each), then time it in a 50 Hz control loop.
demo: install
	$(BIN)/robopt-compile zoo:reacher-cnn --target host --threads $(THREADS) --eval task:episodes=20 -o $(DEMO_OUT) --force
	$(BIN)/robopt-bench $(DEMO_OUT) --runs 500 --threads $(THREADS) --control-rate 50 --save
	$(BIN)/robopt-compile report $(DEMO_OUT)

# Two test processes (pytest-xdist), one test file each at a time: the suite takes ~12 min on
# 2 cores instead of ~17 one after another.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

bench: install
	( $(BIN)/python -m pip install --quiet -e ".[nas]" "$(TORCH)" && \
	  $(BIN)/python -m pip install --quiet --no-deps "torchprofile==0.0.4" ) || \
	  echo "make: the [nas] extra (nvidia-modelopt) did not install: the archsearch section says FastNAS is missing"
	$(BIN)/python -m benchmarks.run --out docs/BENCHMARKS.md

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tests/layers.py

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .ruff_cache
