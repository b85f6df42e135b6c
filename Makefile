PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test lint demo bench clean

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

demo: setup
	@echo "make demo will run the whole pipeline at toy size on the CPU:"
	@echo "  1. train a small base teacher on procedural photo-style faces"
	@echo "  2. fine-tune it with ADA + FreezeD on ~300 game-style faces"
	@echo "  3. blend base and fine-tuned nets by resolution (with a grid over levels)"
	@echo "  4. project held-out photos into the generator"
	@echo "  5. generate (photo, game-style) pairs"
	@echo "  6. train the lightweight student"
	@echo "  7. export it to ONNX and verify it"
	@echo "  8. toonify photos with toon-infer"
	@echo "Not built yet: only the teacher networks exist so far. Try:"
	@echo "  $(BIN)/toon-teacher sample --network ../shared/fixtures/tiny32.pkl --seeds 0-7 --outdir out/samples"

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf out .pytest_cache
