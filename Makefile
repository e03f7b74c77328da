# Sluice — the two quick-start commands are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 127.0.0.1
# The PostgreSQL + Redis pass of `make test` (run when reachable; required when CI=true).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/sluice_ci
TEST_REDIS_URL ?= redis://127.0.0.1:6379/11
# Heavy model runtimes for the dev install; empty it to test the platform without them (their
# tests then skip). CI's extra Python 3.13 pass does that: torch's CPU wheel here is for 3.11.
MODEL_EXTRAS ?= requirements-models-extra.txt
# Generated cases per operation of `make fuzz` (schemathesis' fuzzing phase).
FUZZ_EXAMPLES ?= 50

.PHONY: run superuser test test-embedded test-services lint fmt audit web unary asgi worker beat check-deploy bench clean worker-jobs fuzz

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed-run: requirements.txt requirements-models.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt -r requirements-models.txt
	@touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt requirements-models.txt $(MODEL_EXTRAS) | $(PY)
	$(PY) -m pip install -q -r requirements-dev.txt -r requirements-models.txt $(MODEL_EXTRAS:%=-r %)
	@touch $@ $(VENV)/.installed-run

# Development settings every manage.py command reads (config/settings.py): written once, never
# overwritten; mode 600 because it holds the SECRET_KEY.
.env: | $(PY)
	@umask 077 && $(PY) -c 'import secrets; print("DEBUG=true"); print("SECRET_KEY=" + secrets.token_urlsafe(50))' > $@
	@echo "wrote .env (DEBUG=true and a generated SECRET_KEY)"

## run: install, migrate, load the demo and serve everything in one process (embedded default)
run: $(VENV)/.installed-run | .env
	@mkdir -p var/static; \
	$(PY) manage.py migrate --no-input -v0 && \
	key=$$($(PY) manage.py demo) && \
	echo && echo "  Sluice is starting on http://$(HOST):$(PORT)/" && \
	echo "  Admin:      http://$(HOST):$(PORT)/admin/  (an admin user: make superuser)" && \
	echo "  API docs:   http://$(HOST):$(PORT)/api/docs/" && \
	echo "  Demo key:   $$key" && \
	echo "  Try:        curl -H 'X-API-Key: $$key' http://$(HOST):$(PORT)/v1/tenant" && \
	echo "  Inference:  docs/inference.md (/v1 models, /v2 KServe, /v1/embeddings OpenAI)" && \
	echo "  Models:     curl -H 'X-API-Key: $$key' http://$(HOST):$(PORT)/v1/models" && echo && \
	exec $(PY) manage.py serve --host $(HOST) --port $(PORT)

## superuser: create an admin user (asks for a name and a password)
superuser: $(VENV)/.installed-run | .env
	@mkdir -p var && $(PY) manage.py migrate --no-input -v0 && $(PY) manage.py createsuperuser

## test: the whole suite — embedded default, then PostgreSQL + Redis
test: test-embedded test-services

test-embedded: $(VENV)/.installed-dev
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest

test-services: $(VENV)/.installed-dev
	@if $(PY) scripts/services_up.py "$(TEST_DATABASE_URL)" "$(TEST_REDIS_URL)"; then \
		DATABASE_URL="$(TEST_DATABASE_URL)" REDIS_URL="$(TEST_REDIS_URL)" \
		REDIS_KEY_PREFIX="sluice-test-$$$$" $(PY) -m pytest; \
	elif [ "$$CI" = "true" ]; then echo "PostgreSQL/Redis unreachable under CI" >&2; exit 1; \
	else echo "PostgreSQL or Redis unreachable: skipped the PostgreSQL + Redis pass"; fi

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=true $(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	DEBUG=true DATABASE_URL=sqlite://:memory: $(PY) manage.py makemigrations --check --dry-run

fmt: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

## audit: known vulnerabilities in the pinned requirements and the installed environment
# (pip-audit; AUDIT_SERVICE=osv asks OSV instead of PyPI). CI adds --allow-unreachable.
AUDIT_SERVICE ?= pypi
AUDIT_FLAGS ?=
audit: $(VENV)/.installed-dev
	$(PY) scripts/audit.py --service $(AUDIT_SERVICE) $(AUDIT_FLAGS) \
		requirements.txt requirements-models.txt requirements-models-extra.txt requirements-dev.txt

## Production processes, configured from the environment (as docker-compose.yml runs them)
web: $(VENV)/.installed-run
	$(VENV)/bin/gunicorn config.wsgi --config deploy/gunicorn.conf.py

# The unary inference server: POST /v1/models/{name}/infer on one event loop (docs/architecture.md).
unary: $(VENV)/.installed-run
	$(VENV)/bin/uvicorn config.unary:application --host 0.0.0.0 --port $(PORT) --http httptools --loop uvloop --no-access-log --lifespan off --no-proxy-headers

asgi: $(VENV)/.installed-run
	$(VENV)/bin/python manage.py serve --no-worker --host 0.0.0.0 --port $(PORT)

worker: $(VENV)/.installed-run
	$(VENV)/bin/celery -A config worker --loglevel INFO --queues $${CELERY_QUEUES:-celery,cpu,jobs} --pool threads --concurrency $${CELERY_CONCURRENCY:-4}

# Batch job chunks: prefork (CPU-bound batches, see docs/jobs.md).
worker-jobs: $(VENV)/.installed-run
	$(VENV)/bin/celery -A config worker --loglevel INFO --queues jobs --pool prefork --concurrency $${CELERY_CONCURRENCY:-2}

beat: $(VENV)/.installed-run
	$(VENV)/bin/celery -A config beat --loglevel INFO

## check-deploy: Django's deployment checklist with the documented production variables
check-deploy: $(VENV)/.installed-run
	$(PY) scripts/check_deploy.py

## fuzz: schemathesis against /api/schema/ of a real stack: no generated request may get a 5xx
fuzz: $(VENV)/.installed-dev
	@if $(PY) scripts/services_up.py "$(TEST_DATABASE_URL)" "$(TEST_REDIS_URL)"; then \
		DATABASE_URL="$(TEST_DATABASE_URL)" REDIS_URL="$(TEST_REDIS_URL)" \
		REDIS_KEY_PREFIX="sluice-fuzz-$$$$" $(PY) -m testing.fuzz --examples $(FUZZ_EXAMPLES); \
	else $(PY) -m testing.fuzz --examples $(FUZZ_EXAMPLES); fi

bench: $(VENV)/.installed-dev
	$(PY) bench/auth_overhead.py
	$(PY) bench/ceiling.py
	$(PY) bench/serving.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
