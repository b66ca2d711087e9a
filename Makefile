# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch/torchvision pair that imports together on the project's machines; override elsewhere
# (e.g. `make venv TORCH_PINS=torch`), or leave empty to let pip resolve the newest pair.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO ?= demo_out
SMOKE ?= $(DEMO)/smoke

.PHONY: venv test lint smoke demo clean gpu-wheels

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

# Every step once at toy size, offline: 40 synthetic digits from the bundled teacher (start-up probe included), the
# real digits exported, a 6-epoch DearKD micro student (12 steps) and its evaluation on the 450 real held-out digits.
# About a minute on 2 CPU cores once the venv exists. It checks that the pipeline runs: a student this short stays
# near chance (about 10%); `make demo` is the run that learns.
smoke: venv
	rm -rf $(SMOKE)
	$(BIN)/dfgen synthesize --config configs/digits.yaml -n 40 --schedule 16:30,32:30 --out $(SMOKE)/synthetic --quiet
	$(BIN)/dfgen export-digits --out $(SMOKE)/real
	$(BIN)/distill run --config configs/distill_digits.yaml --shards $(SMOKE)/synthetic --val $(SMOKE)/real/test \
		--epochs 6 --stage1-epochs 5 --eval-every 6 --out $(SMOKE)/run --quiet
	$(BIN)/distill eval --checkpoint $(SMOKE)/run/last.pt --data $(SMOKE)/real/test --ema

# Synthesize from the bundled digits teacher, report on it, distill a ViT student, and print its
# accuracy on the real held-out digits. About 12 minutes on 2 CPU cores from a fresh clone; rerunning resumes.
demo: venv
	$(BIN)/dfgen synthesize --config configs/digits.yaml --out $(DEMO)/synthetic
	$(BIN)/dfgen export-digits --out $(DEMO)/real
	$(BIN)/dfgen report $(DEMO)/synthetic --out $(DEMO)/report --lpips-net $(LPIPS_NET)
	$(BIN)/distill run --config configs/distill_digits.yaml --shards $(DEMO)/synthetic --val $(DEMO)/real/test --out $(DEMO)/run --resume
	@echo "DearKD student (EMA weights) trained on synthetic digits only, on the real held-out digits:"
	$(BIN)/distill eval --checkpoint $(DEMO)/run/last.pt --data $(DEMO)/real/test --ema

# Wheels that benchmarks/gpu_check.sh installs on a GPU machine without network (into .whl/, ignored by git; copy that
# folder to the GPU machine beside the checkout: docs/results.md, "GPU figures").
gpu-wheels:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) bash benchmarks/gpu_wheels.sh

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
