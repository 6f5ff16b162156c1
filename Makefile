# One entry point for humans and CI. `make demo` and `make check` set up
# everything they need (Debian packages, .venv, Kafka jars, PostgreSQL).
PY := .venv/bin/python
SERVICES := $(PY) scripts/services.py

.PHONY: setup services services-down demo check lint typecheck test bench clean \
	image image-test units-check ansible-venv ansible-check fleet-check

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

# Set-up and service notes go to stderr, so `BENCH_ARGS=--json` prints JSON only.
bench:
	@scripts/bootstrap.sh >&2
	@$(SERVICES) up >&2
	@eval "$$($(SERVICES) env)" && .venv/bin/appliance bench $(BENCH_ARGS)

# Exposure score of every unit (systemd-analyze security --offline); also part
# of `test`, so of `check`.
units-check: setup
	.venv/bin/pytest -q tests/test_systemd_units.py

# The store NUC's disk image (root; minutes). Outputs in .cache/image/.
# The tree is configured by the Ansible role `appliance` (chroot connection),
# so the Ansible venv (ansible-core only) is a build dependency.
image: setup ansible-venv
	@scripts/bootstrap.sh image-tools
	APPLIANCE_ANSIBLE_VENV=$(CURDIR)/$(ANSIBLE_VENV) image/build.sh all

# Build the test variant of the image, boot it under nspawn and qemu (TCG,
# UEFI, Secure Boot). Slow: never part of `check`/CI.
image-test: setup ansible-venv
	@scripts/bootstrap.sh image-tools
	APPLIANCE_IMAGE_TESTS=1 APPLIANCE_ANSIBLE_VENV=$(CURDIR)/$(ANSIBLE_VENV) \
		.venv/bin/pytest -q -m image tests/image

# The fleet role and playbooks (issue #8): Ansible in its own venv (never a
# dependency of the appliance), ansible-lint offline on the production
# profile, then the rollout test on fake boxes (minutes; not part of `check`).
ANSIBLE_VENV := .cache/ansible-venv
# ansible-core alone: what image/build.sh needs (ansible-check adds the linter).
ansible-venv:
	@test -x $(ANSIBLE_VENV)/bin/ansible-playbook || \
		{ python3 -m venv $(ANSIBLE_VENV) && \
		  $(ANSIBLE_VENV)/bin/pip install -q ansible-core; }
ansible-check: setup
	@test -x $(ANSIBLE_VENV)/bin/ansible-lint || \
		{ python3 -m venv $(ANSIBLE_VENV) && \
		  $(ANSIBLE_VENV)/bin/pip install -q ansible-core ansible-lint; }
	cd ansible && ../$(ANSIBLE_VENV)/bin/ansible-lint --offline --profile production
	APPLIANCE_ANSIBLE_VENV=$(CURDIR)/$(ANSIBLE_VENV) .venv/bin/pytest -q -m ansible tests/ansible

# The rollout on four booted image boxes (nspawn, SSH on loopback), each
# relaying a store's emulator to the ODH (root; a built image tree from
# `make image`; ~15 min on 2 cores). Never part of `check`/CI.
fleet-check: services
	@test -x $(ANSIBLE_VENV)/bin/ansible-playbook || $(MAKE) ansible-check
	APPLIANCE_FLEET_TESTS=1 APPLIANCE_ANSIBLE_VENV=$(CURDIR)/$(ANSIBLE_VENV) \
		.venv/bin/pytest -q -s -m fleet tests/ansible/test_fleet_image.py

clean:
	rm -rf .cache/demo .cache/bench artifacts
