# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
# Both create or reuse .venv; dependencies are reinstalled only when a requirements file changes, and the
# editable mmjax install only when pyproject.toml does.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/vit_digits_demo
PYTEST_ARGS ?=

.PHONY: demo lint test bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.deps: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

# open-clip-torch only for the real CLIP BPE vocabulary its wheel ships (a tokenizer test reads the file); without
# its dependencies, since torchvision has no build for the pinned torch and would replace it.
$(VENV)/.test-deps: requirements-test.txt $(VENV)/.deps
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	$(BIN)/python -m pip install --quiet --no-deps open-clip-torch==3.3.0
	touch $@

# mmjax itself, editable: the clone's sources are what gets imported. Dependencies come from the stamps above.
$(VENV)/.editable: pyproject.toml $(VENV)/.deps
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# Trains the ViT on scikit-learn's bundled digits from scratch (about a minute on 2 CPU cores).
demo: $(VENV)/.deps
	rm -rf $(DEMO_DIR)
	JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu} $(BIN)/python launch.py --config configs/vit_digits.py --workdir $(DEMO_DIR)
	@echo
	@echo "metrics:      $(DEMO_DIR)/metrics.jsonl"
	@echo "checkpoints:  $(DEMO_DIR)/checkpoints/"
	@echo "predictions:  $(DEMO_DIR)/predictions.png"

# ruff (configured in pyproject.toml) over the whole tree; `make test` fails on any finding.
lint: $(VENV)/.test-deps
	$(BIN)/ruff check .

test: lint $(VENV)/.editable
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q -n 2 --dist worksteal $(PYTEST_ARGS)

# The CPU train-step benchmark (mmjax against PyTorch, side by side); appends to experiments/bench/RESULTS.md.
bench: $(VENV)/.test-deps $(VENV)/.editable
	JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu} $(BIN)/python -m experiments.bench.train_step
