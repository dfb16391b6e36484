# Darkroom entry points. Every target creates the virtual environment it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# CLUSTER=1 (make up/down/logs): RabbitMQ as three clustered nodes, two replicas of
# every service (the override deploy/docker-compose.cluster.yml; docs/scaling.md).
COMPOSE := docker compose -f deploy/docker-compose.yml \
  $(if $(CLUSTER),-f deploy/docker-compose.cluster.yml) --env-file deploy/.env
# Starts the local servers a target needs when they are installed but stopped
# (never restarts one that runs), enables RabbitMQ's management plugin.
LOCAL_SERVICES := deploy/local-services.sh
# promtool and caddy, which some unit tests run on our configs (apt-get when root)
TEST_TOOLS := deploy/test-tools.sh
# Where clients reach the API: every URL Darkroom hands out starts with it.
GATEWAY_PORT ?= 8000
PUBLIC_BASE_URL ?= http://127.0.0.1:$(GATEWAY_PORT)
export PATH := $(CURDIR)/$(BIN):$(PATH)
# The services resolve names with the C library in eventlet's thread pool, not
# with eventlet's green DNS (services/common/resolver.py; deploy/Dockerfile too).
export EVENTLET_NO_GREENDNS := yes

.PHONY: help venv console dev dev-keys test test-unit test-integration test-e2e test-console test-cluster up down logs lint bench migrate clean

help:
	@echo "make dev     run the whole stack locally as processes (starts RabbitMQ if installed and stopped)"
	@echo "make test    run unit, integration and end-to-end tests (starts RabbitMQ, PostgreSQL, Redis as needed)"
	@echo "make test-cluster   a three-node RabbitMQ cluster (rabbitmq-server), a node lost under load"
	@echo "make up/down start/stop the stack with docker compose (deploy/.env from deploy/.env.example)"
	@echo "             CLUSTER=1: three clustered RabbitMQ nodes, two replicas of every service"
	@echo "make lint    ruff;  make bench   benchmarks;  make migrate   apply database migrations"

# The locked versions, each checked against its hash, then the project itself without
# resolving anything (docs/operations.md: how to update the locks), and the Python
# client (clients/python, its dependencies are in the locks) editable, for its tests.
$(STAMP): pyproject.toml requirements-dev.lock clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip install --quiet --no-deps -e clients/python
	@touch $(STAMP)

venv: $(STAMP)

# The web console (console/, served by the gateway at /): exactly the locked npm
# packages (package-lock.json), then the Vite build into console/dist (not committed).
CONSOLE_SOURCES := $(shell find console/src -type f 2>/dev/null) console/index.html \
	console/package.json console/package-lock.json console/tsconfig.json console/vite.config.ts
console/dist/index.html: $(CONSOLE_SOURCES)
	cd console && npm ci --no-audit --no-fund && npm run build
	@touch $@

console: console/dist/index.html

# GATEWAY_PORT=18000 make dev moves the API, and with it PUBLIC_BASE_URL (signed
# file URLs, mail links, checkout return URLs) unless that is set too.
# The fs backend's key ring is generated into var/storage-encryption-keys on the
# first run (mode 600) and used from then on (STORAGE_ENCRYPTION_KEYS overrides it);
# so are the personal fields' key ring and blind-index key (var/field-encryption-keys,
# var/field-index-key; FIELD_ENCRYPTION_KEYS and FIELD_INDEX_KEY override them).
DEV_KEYS = STORAGE_ENCRYPTION_KEYS="$${STORAGE_ENCRYPTION_KEYS:-$$(cat var/storage-encryption-keys)}" \
	  FIELD_ENCRYPTION_KEYS="$${FIELD_ENCRYPTION_KEYS:-$$(cat var/field-encryption-keys)}" \
	  FIELD_INDEX_KEY="$${FIELD_INDEX_KEY:-$$(cat var/field-index-key)}"

dev-keys:
	@mkdir -p var
	@test -s var/storage-encryption-keys || (umask 077; \
	  printf 'dev-%s:%s\n' "$$(date +%Y%m%d)" "$$(head -c 32 /dev/urandom | base64)" \
	  > var/storage-encryption-keys && echo "generated var/storage-encryption-keys")
	@test -s var/field-encryption-keys || (umask 077; \
	  printf 'dev-%s:%s\n' "$$(date +%Y%m%d)" "$$(head -c 32 /dev/urandom | base64)" \
	  > var/field-encryption-keys && echo "generated var/field-encryption-keys")
	@test -s var/field-index-key || (umask 077; head -c 32 /dev/urandom | base64 \
	  > var/field-index-key && echo "generated var/field-index-key")

dev: $(STAMP) dev-keys console/dist/index.html
	@$(LOCAL_SERVICES) rabbitmq
	@mkdir -p var/mail var/objects
	GATEWAY_PORT=$(GATEWAY_PORT) PUBLIC_BASE_URL=$(PUBLIC_BASE_URL) $(DEV_KEYS) \
	  $(BIN)/honcho --procfile deploy/Procfile --app-root . start

migrate: $(STAMP) dev-keys
	$(DEV_KEYS) $(BIN)/python -m services.common.migrations auth notifications storage billing generation privacy

# tests/cluster is make test-cluster's, not collected here.
test: $(STAMP) console/dist/index.html
	@$(LOCAL_SERVICES)
	@-$(TEST_TOOLS)
	$(BIN)/pytest -q tests --ignore=tests/cluster

# The unit tests need no server.
test-unit: $(STAMP)
	@-$(TEST_TOOLS)
	$(BIN)/pytest -q tests/unit

test-integration: $(STAMP)
	@$(LOCAL_SERVICES)
	$(BIN)/pytest -q tests/integration

test-e2e: $(STAMP)
	@$(LOCAL_SERVICES) rabbitmq postgres
	$(BIN)/pytest -q tests/e2e

# The console in Chromium (Debian's, installed by deploy/test-tools.sh) through the whole stack.
test-console: $(STAMP) console/dist/index.html
	@$(LOCAL_SERVICES) rabbitmq postgres
	@-$(TEST_TOOLS) chromium
	$(BIN)/pytest -q tests/e2e/console

# Three RabbitMQ nodes of their own, clustered (tests/cluster/harness.py starts them from
# rabbitmq-server: the system broker is left alone), the stack on them with two replicas of
# every service, a node lost in the middle of a job stream; prints its figures (-s).
test-cluster: $(STAMP)
	@$(LOCAL_SERVICES) postgres
	$(BIN)/pytest -q -s tests/cluster

# Once: deploy/.env from the example, each change-me placeholder replaced by a fresh
# random secret (192 bits, hex: safe inside URLs), each change-me-key-ring-NAME by
# a key ring of one fresh 256-bit key NAME-1:base64. Never overwritten afterwards.
deploy/.env:
	@umask 077; while IFS= read -r line; do \
	  case "$$line" in \
	    [A-Z]*=change-me-key-ring-*) printf '%s=%s:%s\n' "$${line%%=*}" \
	      "$${line##*=change-me-key-ring-}-1" "$$(head -c 32 /dev/urandom | base64)" ;; \
	    [A-Z]*=change-me*) printf '%s=%s\n' "$${line%%=*}" \
	      "$$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" ;; \
	    *) printf '%s\n' "$$line" ;; \
	  esac; \
	done < deploy/.env.example > deploy/.env.tmp && mv deploy/.env.tmp deploy/.env
	@echo "created deploy/.env (mode 600) with fresh random secrets: keep it private"

# The stack on docker compose (COMPOSE_PROFILES=mail adds Mailpit). The services
# report healthy once migrated and consuming: `docker compose ps` shows it.
up: deploy/.env
	$(COMPOSE) up -d --build

# Stops and removes the containers; the data volumes stay (`down -v` would delete them).
down:
	$(COMPOSE) down

# Follows every process's JSON logs, or one's: make logs SERVICE=gateway
logs:
	$(COMPOSE) logs -f --tail=200 $(SERVICE)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	@$(LOCAL_SERVICES) rabbitmq postgres
	@-$(TEST_TOOLS) wrk
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .pytest_cache console/dist console/node_modules
