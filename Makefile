# agentcluster: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEPS := bash cluster/services/deps.sh
# Integration tests read service endpoints from .data/services.env (written by deps-up).
PYTEST_ARGS ?=

.PHONY: help install lock deps-up deps-down deps-status run stack-up health health-wait test \
        test-unit test-integration bench quality format lint typecheck clean policy-wasm \
        build docker-image dev-up dev-down dev-logs dev-rebuild local-ssh cluster-up cluster-down \
        chaos soak

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the locked dependencies and the project

lock: ## Re-resolve dependencies from pyproject.toml into requirements.lock
	@# soupsieve: 3.0.2 and later need Python 3.11.5; see the check below.
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv && \
	  .lockenv/bin/pip install --quiet '.[dev]' 'soupsieve<3.0.2'
	{ echo '# Resolved versions of every Python dependency (runtime and dev), for reproducible installs.'; \
	  echo '# Regenerate with `make lock` after changing pyproject.toml.'; \
	  .lockenv/bin/pip freeze --exclude-editable | grep -iv '^agentcluster'; } > requirements.lock
	rm -rf .lockenv
	@# cluster/local.yaml installs the lock with Debian 12's Python 3.11.2: every pin must allow it.
	$(BIN)/pip install --quiet --dry-run --ignore-installed --python-version 3.11.2 \
	  --only-binary=:all: --target .lockcheck -r requirements.lock \
	  || { echo "lock: a pin does not install on Python 3.11.2; cap it in the recipe" >&2; exit 1; }

deps-up: ## Install (if missing), start and health-check PostgreSQL, Redis, Kafka, OPA
	$(DEPS) up

deps-down: ## Stop the local services (data is kept in .data/)
	$(DEPS) down

deps-status: ## Show which local services are up
	$(DEPS) status

run: install ## Set up and run the main job: Ray + gateway on 127.0.0.1:21016, embedded defaults
	$(BIN)/agentcluster serve

stack-up: install deps-up ## Like run, against the services of deps-up (PostgreSQL, Kafka, Redis, OPA)
	set -a && source .data/services.env && set +a && $(BIN)/agentcluster serve

dev-up: install deps-up ## Services plus the stack in the background (log: make dev-logs)
	set -a && source .data/services.env && set +a && $(BIN)/agentcluster up

dev-down: ## Stop the background stack (agentcluster down), then the services
	-$(BIN)/agentcluster down
	$(DEPS) down

dev-logs: ## Follow the stack's log and the services' logs
	tail -n 100 -F .data/agentcluster.log .data/postgres.log .data/opa.log .data/kafka/broker.log

dev-rebuild: ## Reinstall the project and dependencies, then restart the background stack
	-$(BIN)/agentcluster down
	rm -f $(STAMP)
	$(MAKE) dev-up

local-ssh: ## Loopback SSH for `ray up cluster/local.yaml` (sshd on 127.0.0.1:22, user, key)
	bash cluster/local-ssh.sh up

cluster-up: install local-ssh ## `ray up cluster/local.yaml`: this machine as a one-node Ray cluster
	$(BIN)/ray up -y cluster/local.yaml

cluster-down: install ## `ray down cluster/local.yaml` (stops only that cluster: it runs as its own user)
	$(BIN)/ray down -y cluster/local.yaml

GATEWAY_URL ?= http://127.0.0.1:21016

health: ## Ask the running gateway whether it and its dependencies are ready
	curl -sS --max-time 10 $(GATEWAY_URL)/v1/ready; echo

health-wait: ## Wait (up to 120 s) until the gateway answers ready
	for i in $$(seq 1 120); do \
	  curl -sf --max-time 2 $(GATEWAY_URL)/v1/ready >/dev/null && { echo ready; exit 0; }; sleep 1; \
	done; echo "gateway not ready after 120 s" >&2; exit 1

test: install deps-up local-ssh ## Set up everything and run the whole test suite against real services
	set -a && source .data/services.env && set +a && $(BIN)/pytest $(PYTEST_ARGS)

test-unit: install ## Unit tests only (no services)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: install deps-up ## Integration tests only
	set -a && source .data/services.env && set +a && $(BIN)/pytest tests/integration $(PYTEST_ARGS)

bench: install deps-up ## Run the benchmarks (results go to docs/benchmarks.md)
	set -a && source .data/services.env && set +a && $(BIN)/python -m benchmarks.activation && \
	  $(BIN)/python -m benchmarks.turn_overhead && $(BIN)/python -m benchmarks.pool && \
	  $(BIN)/python -m benchmarks.browser_egress && $(BIN)/python -m benchmarks.python_exec && \
	  $(BIN)/python -m benchmarks.facades

chaos: install deps-up ## Chaos suite on a private stack (faults, checks); tables to docs/reliability.md
	$(BIN)/python -m benchmarks.chaos $(CHAOS_ARGS)

SOAK_MINUTES ?= 10
soak: install deps-up ## 1,000 SSE streams held SOAK_MINUTES (10) with turns running; docs/reliability.md
	$(BIN)/python -m benchmarks.soak --minutes $(SOAK_MINUTES)

policy-wasm: install ## Rebuild the in-process policy (agentcluster/policy/authz.*) from policies/
	$(BIN)/python -m agentcluster.policy._build --opa "$${AC_OPA_BIN:-.data/bin/opa}" --policies policies

build: install ## Build the wheel into dist/ (DIST=<dir> to change), package data included
	@# No build isolation: the venv's setuptools builds it, so no index is needed; only a venv whose
	@# setuptools predates pyproject.toml's requirement fetches a newer one first.
	$(BIN)/python -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)' \
	  || $(BIN)/pip install --quiet 'setuptools>=68' wheel
	rm -f $(or $(DIST),dist)/agentcluster-*.whl
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation -w $(or $(DIST),dist) .
	@ls $(or $(DIST),dist)/agentcluster-*.whl

docker-image: ## Build the cluster image agentcluster:<version> from the Dockerfile (needs Docker)
	@if ! docker info >/dev/null 2>&1; then \
	  echo "docker-image: no Docker engine on this machine (docker info failed);" \
	    "the Dockerfile is at $(CURDIR)/Dockerfile" >&2; \
	  exit 1; \
	fi
	version=$$(sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml | head -n 1) && \
	  docker build -t agentcluster:$$version .

format: install ## Format with black and ruff --fix (line length 100)
	$(BIN)/black -q .
	$(BIN)/ruff check --fix -q .

lint: install ## Lint with ruff
	$(BIN)/ruff check .
	$(BIN)/black --check -q .

typecheck: install ## Type-check with mypy
	$(BIN)/mypy

quality: lint typecheck test ## The quality gate: lint, types, tests

clean: ## Remove caches (not .venv, not .data)
	rm -rf .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
