# One entry point for humans and CI. `make demo` and `make check` set up
# everything they need (Debian packages, .venv, Kafka jars, PostgreSQL).
PY := .venv/bin/python
SERVICES := $(PY) scripts/services.py

.PHONY: setup services services-down demo check lint typecheck test bench clean

setup:
	@scripts/bootstrap.sh

services: setup
	@$(SERVICES) up

services-down:
	@$(SERVICES) down

demo: services
	@$(PY) scripts/demo.py

lint: setup
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .

typecheck: setup
	.venv/bin/mypy

test: services
	.venv/bin/pytest -q

# Every check, the same locally and in CI (.ci/run calls this).
check: lint typecheck test

bench: services
	@eval "$$($(SERVICES) env)" && .venv/bin/appliance bench

clean:
	rm -rf .cache/demo .cache/bench artifacts
