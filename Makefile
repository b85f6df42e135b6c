PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test lint demo bench gpu-check clean

setup: $(BIN)/toon-teacher

$(BIN)/toon-teacher: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,serve]'
	touch $@

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

SCALE ?= demo

demo: setup
	$(BIN)/python -m demo.run --scale $(SCALE)

bench: setup
	$(BIN)/python bench/run_all.py

# On a machine with a CUDA GPU: the cuda tests and the GPU benchmarks in under five minutes,
# offline (no setup step: nothing is installed), into one JSON file (bench/gpu_check.py;
# refuses in one line without a GPU).
gpu-check:
	$(BIN)/python bench/gpu_check.py --out out/gpu-check.json

clean:
	rm -rf out .pytest_cache
