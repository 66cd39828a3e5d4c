# Self-documenting: `make help` lists every target with its `## ` comment.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED_DATA := $(abspath ../shared/data)
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
TEST_ENV := $(OFFLINE) WANDB_MODE=disabled CPOLY_DATA_DIR=$${CPOLY_DATA_DIR:-$(SHARED_DATA)}

.DEFAULT_GOAL := help
.PHONY: help install run test test-all lint format smoke docs-tables clean clean-logs

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, at the constraints' version: pip then takes the local CPU wheel, never a CUDA build
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,backbones]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev and backbone extras

run: $(STAMP) ## the main job: train C-Poly on the synthetic benchmark with tiny_t5, offline, on CPU
	$(OFFLINE) WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/python train.py $(ARGS)

test: $(STAMP) ## the fast tier: every test not marked slow (offline, CPU), the one to run while working
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow" $(ARGS)

test-all: $(STAMP) ## every test (slow ones included; gpu-marked ones run where CUDA exists): what CI runs
	$(TEST_ENV) $(BIN)/python -m pytest -q $(ARGS)


docs-tables: $(STAMP) ## rewrite the results tables of README.md and docs/ from docs/results/*.csv
	$(BIN)/python -m cpoly.report --docs

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP) ## ruff fix and format
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

smoke: $(STAMP) ## a few training steps of every piece, in seconds
	$(OFFLINE) WANDB_MODE=disabled $(BIN)/python train.py debug=smoke

gpu-bundle: $(STAMP) ## build gpu_bundle/ for benchmarks/gpu_check.sh on a bare GPU machine (wheels from PyPI, SuperNI subsample, tokenizer, MiniLM in fp16, SuperGLUE)
	$(BIN)/python benchmarks/gpu_bundle.py --out gpu_bundle --shared $${CPOLY_DATA_DIR:-$(SHARED_DATA)}/superni \
		--superglue $${CPOLY_DATA_DIR:-$(SHARED_DATA)}/superglue

clean-logs: ## delete run folders under logs/
	rm -rf logs/

clean: clean-logs ## delete the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .cache
