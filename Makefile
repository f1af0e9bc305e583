# paas: the two commands a newcomer runs are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
# Debian packages the platform needs on a host, and the extra ones the suite and benchmarks need.
DEBS_UP := redis-server git iptables gcc libc6-dev python3-venv python3-dev debootstrap
DEBS_TEST := $(DEBS_UP) postgresql runc crun wrk nginx-light debootstrap busybox-static chromium

.PHONY: up down stack test check lint types bench venv debs-up debs-test clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "paas: $(PYTHON) is needed" >&2; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

debs-up:
	@scripts/ensure-debs $(DEBS_UP)

debs-test:
	@scripts/ensure-debs $(DEBS_TEST)

## Bring the whole platform up on this host with the embedded defaults.
## Its data stays in the checkout (./var) unless PAAS_DATA_DIR says otherwise.
up: debs-up venv
	@PAAS_DATA_DIR="$${PAAS_DATA_DIR:-$(CURDIR)/var}" $(PY) manage.py up

## Stop this host's app containers (through the runtime daemon when it is up) and remove the
## container network: bridge, iptables rules, routes and address state. As root.
down: venv
	@PAAS_DATA_DIR="$${PAAS_DATA_DIR:-$(CURDIR)/var}" $(PY) -m runtime down

## Build the debian-13 stack that apps build and run on (once per host; a few minutes).
stack: debs-up venv
	@PAAS_DATA_DIR="$${PAAS_DATA_DIR:-$(CURDIR)/var}" $(PY) -m runtime.stacks build debian-13

## The whole suite: SQLite pass over everything, then the PostgreSQL pass over the control plane.
test: debs-test venv
	@scripts/with-test-services bash -c '\
	  $(PYTEST) -q && \
	  echo "--- PostgreSQL pass ---" && \
	  DATABASE_URL="$$PAAS_TEST_POSTGRES_URL" $(PYTEST) -q tests/controlplane tests/web tests/scheduler \
	    --ignore-glob="tests/controlplane/test_cli_*"'

## Lint, types and the fast tests, for iteration.
check: venv lint types
	@scripts/with-test-services $(PYTEST) -q -x -m "not slow and not root"

lint: venv
	$(VENV)/bin/ruff check .

types: venv
	$(VENV)/bin/mypy runtime router builder platform/controlplane platform/paas_cli platform/core platform/restapi platform/gitserver platform/registry platform/scheduler web

bench: debs-test venv
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV)
