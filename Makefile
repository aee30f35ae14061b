# Both entry points set themselves up: a fresh machine needs only python3 (>= 3.11) and make.
#   make run    installs the driver and its runtime dependencies, then runs it on the simulator
#   make test   installs the test tools too, then lints, type-checks and runs every test
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
RUNTIME_STAMP := $(VENV)/.runtime-stamp
TEST_STAMP    := $(VENV)/.test-stamp
HYPOTHESIS_PROFILE ?= ci

.PHONY: run test lint typecheck unit diagrams proto proto-check bench clean constraints sanity mutate

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	    echo "rdscsi needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) -V 2>&1)." \
	         "Install a newer one, or run: make $(MAKECMDGOALS) PYTHON=python3.12"; exit 1; }
	@echo "==> creating $(VENV) ($(PYTHON) -m venv)"
	@$(PYTHON) -m venv $(VENV) || { \
	    echo "$(PYTHON) -m venv failed: on Debian/Ubuntu install python3-venv first"; exit 1; }

# The driver and its runtime dependencies only: what `make run` needs.
$(RUNTIME_STAMP): pyproject.toml | $(PY)
	@echo "==> installing rdscsi and its runtime dependencies into $(VENV) (first time: about a minute)"
	$(PY) -m pip install --disable-pip-version-check -e .
	@touch $@

# Plus the test, lint and type-checking tools: what `make test` needs.
$(TEST_STAMP): pyproject.toml | $(PY)
	@echo "==> installing rdscsi with its test tools into $(VENV) (first time: a minute or two)"
	$(PY) -m pip install --disable-pip-version-check -e '.[test]'
	@touch $@ $(RUNTIME_STAMP)

run: $(RUNTIME_STAMP)
	@echo "==> $(VENV)/bin/rdscsi run   (Ctrl-C stops it)"
	@$(VENV)/bin/rdscsi run

test: $(TEST_STAMP) lint typecheck diagrams proto-check unit

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(TEST_STAMP)
	$(VENV)/bin/mypy

diagrams: $(TEST_STAMP)
	$(VENV)/bin/rdscsi diagrams --check

# The CSI protocol modules are committed protoc output: check they match csi.proto.
proto-check: $(TEST_STAMP)
	$(PY) -m rdscsi.csi.generate --check

proto: $(TEST_STAMP)
	$(PY) -m rdscsi.csi.generate

unit: $(TEST_STAMP)
	HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(VENV)/bin/pytest

# The CSI conformance suite (kubernetes-csi csi-sanity) against `rdscsi run`: filesystem
# volumes, then raw block; root and loop devices needed. The binary: $$CSI_SANITY, else
# ../shared/tools/csi-sanity, else csi-sanity on PATH. `make test` runs it too when it can
# (tests/sanity), and says why when it cannot.
sanity: $(TEST_STAMP)
	$(PY) -m tests.sanity.runner

# Mutation testing (opt-in, hours): every mutant of machines/, hooks/ and control/ must fail
# a test. MUTATE_ARGS narrows it, e.g. MUTATE_ARGS="--only machines/node.py -j 2".
MUTATE_ARGS ?=
mutate: $(TEST_STAMP)
	$(PY) -m tests.mutation.run $(MUTATE_ARGS)

bench: $(TEST_STAMP)
	$(PY) bench/machines.py --json
	$(PY) bench/rds.py --json
	$(PY) bench/provision.py --json
	$(PY) bench/reconcile.py --json

# The image's dependency locks (deploy/image/*.lock, every file hashed): re-run after changing
# the dependencies in pyproject.toml (tests/image fails until they match).
constraints: $(TEST_STAMP)
	$(PY) -m pip install --quiet uv
	$(PY) deploy/image/lock.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
