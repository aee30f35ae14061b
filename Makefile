# Both entry points set themselves up: a fresh machine needs only python3 and make.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
HYPOTHESIS_PROFILE ?= ci

.PHONY: run test lint typecheck unit diagrams proto proto-check bench clean constraints

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/rdscsi run

test: $(STAMP) lint typecheck diagrams proto-check unit

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

diagrams: $(STAMP)
	$(VENV)/bin/rdscsi diagrams --check

# The CSI protocol modules are committed protoc output: check they match csi.proto.
proto-check: $(STAMP)
	$(PY) -m rdscsi.csi.generate --check

proto: $(STAMP)
	$(PY) -m rdscsi.csi.generate

unit: $(STAMP)
	HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) bench/machines.py --json
	$(PY) bench/rds.py --json
	$(PY) bench/provision.py --json
	$(PY) bench/reconcile.py --json

# The image's dependency locks (deploy/image/*.lock, every file hashed): re-run after changing
# the dependencies in pyproject.toml (tests/image fails until they match).
constraints: $(STAMP)
	$(PY) -m pip install --quiet uv
	$(PY) deploy/image/lock.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
