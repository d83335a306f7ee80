# The two commands a newcomer needs:
#   make run    start the service on the embedded default (SQLite under var/), port 8000
#   make test   lint + the whole test suite (needs PostgreSQL on 127.0.0.1:5432)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://root@127.0.0.1:5432/postback

.PHONY: run test lint install install-dev chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
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

# The admin's browser tests drive Debian's Chromium (Playwright's own download is not used).
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

test: lint chromium
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest
