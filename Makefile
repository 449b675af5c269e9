# migrator: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := unixodbc odbc-postgresql libsqliteodbc tdsodbc bind9 bind9-utils

.PHONY: install system-packages sqlserver-driver node-packages test lint demo fleet-demo bench clean

install: system-packages sqlserver-driver node-packages $(STAMP)

# System packages: installed with apt-get only when one is missing (and only as root).
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing system packages:$$missing (run as root or install them)"; exit 1; fi; \
	fi

# Microsoft's ODBC Driver 18 for SQL Server, only where it can be: its licence must be accepted by whoever
# installs it (ACCEPT_MSODBC_EULA=y), as root, with packages.microsoft.com reachable. Otherwise nothing happens
# and FreeTDS (tdsodbc, above) is the SQL Server driver; install never fails for want of it.
sqlserver-driver:
	@if dpkg -s msodbcsql18 >/dev/null 2>&1 || [ "$(ACCEPT_MSODBC_EULA)" != y ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "ODBC Driver 18 for SQL Server: not installed (needs root)"; exit 0; fi; \
	if ! timeout 5 getent hosts packages.microsoft.com >/dev/null; then \
	  echo "ODBC Driver 18 for SQL Server: not installed (packages.microsoft.com unreachable); FreeTDS stays"; \
	  exit 0; fi; \
	release=$$(. /etc/os-release; echo "$$ID/$${VERSION_ID%%.*}"); deb=$$(mktemp --suffix=.deb); \
	{ curl -fsSL -o "$$deb" "https://packages.microsoft.com/config/$$release/packages-microsoft-prod.deb" && \
	  dpkg -i "$$deb" >/dev/null && apt-get update -qq && \
	  ACCEPT_EULA=Y DEBIAN_FRONTEND=noninteractive apt-get install -y -qq msodbcsql18; } || \
	  echo "ODBC Driver 18 for SQL Server: not installed (see above); FreeTDS stays"; rm -f "$$deb"

node-packages: node_modules/.package-lock.json

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

test: install
	$(BIN)/ruff check migrator tests bench fixtures
	$(BIN)/mypy migrator
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check migrator tests bench fixtures
	$(BIN)/mypy migrator

demo: install
	$(BIN)/python -m fixtures.demo

# A campaign of six small tenants in two time zones on a Temporal dev server with two worker hosts.
fleet-demo: install
	$(BIN)/python -m fixtures.fleet_demo

bench: install
	$(BIN)/python bench/checkpoint.py
	$(BIN)/python bench/blobs.py
	$(BIN)/python bench/database.py
	$(BIN)/python bench/db_sync.py
	$(BIN)/python bench/forecast.py
	$(BIN)/python bench/window.py
	$(BIN)/python bench/fleet.py

clean:
	rm -rf $(VENV) node_modules .migrator .pytest_cache
