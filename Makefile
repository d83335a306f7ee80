# The two commands a newcomer needs:
#   make run    start the service and its delivery worker on the embedded default (SQLite under var/), port 8000
#   make test   lint + vulnerability audit + the whole test suite (needs PostgreSQL on 127.0.0.1:5432)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# The embedded default listens on this machine only; HOST=0.0.0.0 opens it to the network.
HOST ?= 127.0.0.1
TEST_DATABASE_URL ?= postgres://root@127.0.0.1:5432/postback

.PHONY: run test lint audit install install-dev system-packages

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

# The server and, beside it, the delivery worker that sends postbacks to publishers;
# Ctrl-C (or the server ending) stops both. The read API answers this machine's own curl
# without a token (LOOPBACK_READS_WITHOUT_TOKEN=false turns that off).
run: $(VENV)/.runtime
	$(BIN)/python manage.py init_partners
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	@echo "The admin: http://localhost:$(PORT)/admin/ (create its login: $(BIN)/python manage.py createsuperuser)"
	@$(BIN)/python manage.py deliver_postbacks & worker=$$!; \
	trap 'kill -TERM $$worker 2>/dev/null; wait $$worker' EXIT; \
	trap 'exit 130' INT TERM; \
	LOOPBACK_READS_WITHOUT_TOKEN=$${LOOPBACK_READS_WITHOUT_TOKEN:-true} HOST=$(HOST) PORT=$(PORT) \
		$(BIN)/gunicorn -c postback_site/gunicorn.conf.py

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Known vulnerabilities in any locked package (runtime and test) fail the build.
# AUDIT_FLAGS=--strict also fails when a package could not be checked.
AUDIT_FLAGS ?=
audit: $(VENV)/.dev
	$(BIN)/pip-audit --progress-spinner off --disable-pip --require-hashes -r requirements-dev.lock $(AUDIT_FLAGS)

# What the tests drive besides Python: Debian's Chromium for the admin's browser tests
# (Playwright's own download is not used) and a real PgBouncer.
SYSTEM_PACKAGES := chromium pgbouncer
system-packages:
	@missing=""; for package in $(SYSTEM_PACKAGES); do \
		command -v $$package >/dev/null || [ -x /usr/sbin/$$package ] || missing="$$missing $$package"; done; \
	if [ -n "$$missing" ]; then apt-get update && apt-get install -y $$missing; fi

# The postback tests run a second time with the PostgreSQL partner databases reached
# through PgBouncer in transaction mode (the documented layout for many partners).
PGBOUNCER_TESTS := tests/conversions tests/reconciliation tests/partners/test_shared_storage.py tests/e2e/test_many_partners.py tests/e2e/test_scale_out.py

test: lint audit system-packages
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest --durations=25
	TEST_THROUGH_PGBOUNCER=1 DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest $(PGBOUNCER_TESTS) \
		-k "not sqlite" -m "not direct_postgres" -p no:cacheprovider
