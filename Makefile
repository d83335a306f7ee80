# The two commands a newcomer needs:
#   make run    start the service on the embedded default (SQLite under var/), port 8000
#   make test   lint + vulnerability audit + the whole test suite (needs PostgreSQL on 127.0.0.1:5432)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://root@127.0.0.1:5432/postback

.PHONY: run test lint audit install install-dev chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Installs exactly the locks: every package pinned with its hashes (requirements*.txt
# say how to regenerate them); pip refuses anything unpinned or altered.
$(VENV)/.runtime: requirements.lock | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	touch $@

$(VENV)/.dev: requirements.lock requirements-dev.lock | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	touch $@ $(VENV)/.runtime

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

run: $(VENV)/.runtime
	$(BIN)/python manage.py init_partners
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	PORT=$(PORT) $(BIN)/gunicorn -c postback_site/gunicorn.conf.py

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Known vulnerabilities in any locked package (runtime and test) fail the build.
# AUDIT_FLAGS=--strict also fails when a package could not be checked.
AUDIT_FLAGS ?=
audit: $(VENV)/.dev
	$(BIN)/pip-audit --progress-spinner off --disable-pip --require-hashes -r requirements-dev.lock $(AUDIT_FLAGS)

# The admin's browser tests drive Debian's Chromium (Playwright's own download is not used).
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

test: lint audit chromium
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest
