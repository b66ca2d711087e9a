# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch/torchvision pair that imports together on the project's machines; override elsewhere
# (e.g. `make venv TORCH_PINS=torch`), or leave empty to let pip resolve the newest pair.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO ?= demo_out

.PHONY: venv test lint demo clean gpu-wheels

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

# LPIPS needs torchvision's AlexNet file, which cannot be downloaded offline: use it when present.
LPIPS_NET ?= $(shell test -f $${TORCH_HOME:-$$HOME/.cache/torch}/hub/checkpoints/alexnet-owt-7be5be79.pth && echo alex || echo none)

# Synthesize from the bundled digits teacher, report on it, distill a ViT student, and print its
# accuracy on the real held-out digits. About 12 minutes on 2 CPU cores from a fresh clone; rerunning resumes.
demo: venv
	$(BIN)/dfgen synthesize --config configs/digits.yaml --out $(DEMO)/synthetic
	$(BIN)/dfgen export-digits --out $(DEMO)/real
	$(BIN)/dfgen report $(DEMO)/synthetic --out $(DEMO)/report --lpips-net $(LPIPS_NET)
	$(BIN)/distill run --config configs/distill_digits.yaml --shards $(DEMO)/synthetic --val $(DEMO)/real/test --out $(DEMO)/run --resume
	@echo "DearKD student (EMA weights) trained on synthetic digits only, on the real held-out digits:"
	$(BIN)/distill eval --checkpoint $(DEMO)/run/last.pt --data $(DEMO)/real/test --ema

# Wheels that benchmarks/gpu_check.sh installs on a GPU machine without network (.whl/, ignored by git; the README's
# "GPU figures" section gives the device call that carries it).
gpu-wheels:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) bash benchmarks/gpu_wheels.sh

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
