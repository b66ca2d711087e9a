# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch/torchvision pair that imports together on the project's machines; override elsewhere
# (e.g. `make venv TORCH_PINS=torch`), or leave empty to let pip resolve the newest pair.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO ?= demo_out

.PHONY: venv test lint demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

lint: venv
	$(BIN)/ruff check .

test: venv lint
	$(BIN)/python -m pytest -q

# Synthesize from the bundled digits teacher, report on it, distill a ViT student, and print its
# accuracy on the real held-out digits. About 10 minutes on 2 CPU cores.
demo: venv
	$(BIN)/python benchmarks/demo.py --out $(DEMO)

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
