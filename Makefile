# Every target bootstraps what it needs: a virtual environment in .venv with the project installed
# from pyproject.toml, pinned by constraints.txt (the set CI tests).
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test files run on this many workers, each with its own servers, state folder and ports. Much of
# each tier is waiting (bake windows, flushes, servers starting), so a third worker on two cores
# fills those waits: on a clean clone, 1,032 tests took 1,610 s on three workers against 2,055 s
# for 1,019 on two (the cores ~100 % busy on three; each file 17 % slower, 1.5x as many at once).
# Files go out in collection order, the long end-to-end and fault tiers first, so no long file
# starts last. 0: one process.
TEST_WORKERS ?= 3

.PHONY: help setup engine prometheus postgres tools wrk demo up down status test test-unit lint bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(STAMP) ## Create .venv and install the project with its pinned dependencies

engine: ## Podman (Docker API) and a local image registry, for building and running model images
	@infra/docker/setup-engine.sh || echo "no container engine set up: the image tests will skip (use Docker with DOCKER_HOST, or run this as root on Debian)"

prometheus: ## Prometheus (server, promtool) and the Pushgateway from Debian's packages when missing: the release's canary analysis reads its metrics there
	@(command -v prometheus && command -v promtool && command -v prometheus-pushgateway) >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway) || echo "no Prometheus: mlops up will say what to install; releases cannot judge their canaries without it"

WORKERS := .tools/workers/.installed

tools: prometheus $(WORKERS) ## kubectl (manifest dry-runs) from Debian's packages when missing; checkov (Terraform) and the vertex and azure pools' workers in .tools/
	@command -v kubectl >/dev/null || (apt-get update -qq && apt-get install -y -qq kubernetes-client) || echo "no kubectl: the manifest dry-run test will skip"
	@test -x .tools/checkov/bin/checkov || ($(PYTHON) -m venv .tools/checkov && .tools/checkov/bin/pip install --quiet -c infra/terraform/checkov-constraints.txt checkov) || echo "no checkov: the Terraform scan tests will skip"

# The vertex-ai and azure-container-instance workers' packages beside the project (not in it:
# pyproject.toml's `workers` extra says why), for the tests of those pools' job specifications.
$(WORKERS): $(STAMP) deployments/work-pools/workers-requirements.txt constraints.txt
	@rm -rf .tools/workers
	$(BIN)/python -m pip install --quiet --no-deps --target .tools/workers -c constraints.txt -r deployments/work-pools/workers-requirements.txt
	@touch $@

postgres: ## PostgreSQL from Debian's packages when missing: the tests and the trigger benchmark run the Prefect server on a private cluster
	@(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb) >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql) || echo "no PostgreSQL: the Postgres tests skip and benchmarks/trigger_latency.py measures SQLite"

wrk: ## wrk (HTTP load generator) from Debian's packages when missing: benchmarks/serving.py drives the servers with it
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk) || echo "no wrk: benchmarks/serving.py cannot run"

demo: $(STAMP) prometheus ## The main job: start the local stack and run the training deployment on it
	$(BIN)/mlops demo --fresh

up: $(STAMP) prometheus ## Start the local stack (Prefect server, MLflow server, Prometheus, Pushgateway, worker)
	$(BIN)/mlops up

down: $(STAMP) ## Stop the local stack
	$(BIN)/mlops down

status: $(STAMP) ## Show what runs where
	$(BIN)/mlops status

test: $(STAMP) engine tools postgres ## Run every test tier: unit, flows (real servers), integration (the CLI, stack, images)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-unit: $(STAMP) ## Only the unit tier (no services)
	$(BIN)/python -m pytest -m unit

lint: $(STAMP) ## ruff and mypy, as CI runs them
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP) prometheus postgres wrk ## Benchmarks (each prints ratios; the last line's first number is the headline)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/rerun.py
	$(BIN)/python benchmarks/inference_path.py
	$(BIN)/python benchmarks/explain.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/router.py
	$(BIN)/python benchmarks/trigger_latency.py
	$(BIN)/python benchmarks/shared_stack_load.py
	$(BIN)/python benchmarks/closed_loop.py
	$(BIN)/python benchmarks/drift.py
	$(BIN)/python benchmarks/drift_false_alarms.py
	$(BIN)/python benchmarks/monitoring_scale.py
	$(BIN)/python benchmarks/dask_search.py

clean: ## Remove the local stack's state (stop it first with make down)
	rm -rf .mlops
