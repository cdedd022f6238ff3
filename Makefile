# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
# Both create or reuse .venv; dependencies are reinstalled only when a requirements file changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/vit_digits_demo
PYTEST_ARGS ?=

.PHONY: demo test bench clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.deps: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-deps: requirements-test.txt $(VENV)/.deps
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $@

# Trains the ViT on scikit-learn's bundled digits from scratch (about a minute on 2 CPU cores).
demo: $(VENV)/.deps
	rm -rf $(DEMO_DIR)
	JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu} $(BIN)/python launch.py --config configs/vit_digits.py --workdir $(DEMO_DIR)
	@echo
	@echo "metrics:      $(DEMO_DIR)/metrics.jsonl"
	@echo "checkpoints:  $(DEMO_DIR)/checkpoints/"
	@echo "predictions:  $(DEMO_DIR)/predictions.png"

test: $(VENV)/.test-deps
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

bench: $(VENV)/.test-deps
	JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu} $(BIN)/python experiments/bench/train_step.py
