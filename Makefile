# Powernode Spawn — every target sets itself up: a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
DATA_DIR ?= .powernode
CHILD_IMAGE_DIR ?= .child-image

.PHONY: install test test-random test-vm lint schemas run demo bench soak chaos mutate child-image clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing into $(VENV) ..."
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@# setuptools announces every editable install with an informational warning; keep only errors.
	@PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -p no:randomly

# The same suite in a random order (pytest-randomly; SEED=N repeats one).
test-random: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(if $(SEED),--randomly-seed=$(SEED))

# Children in real QEMU guests (TCG when there is no KVM), every mode and the lifecycle: slow.
test-vm: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m 'qemu or vm' -rP tests/e2e/test_qemu_e2e.py

lint: $(STAMP)
	$(BIN)/ruff check hub child_agent shared_contract tests migrations bench chaos
	$(BIN)/ruff format --check hub child_agent shared_contract
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/python -m shared_contract.schemas --write

run: $(STAMP)
	$(BIN)/powernode-hub serve --data-dir $(DATA_DIR)

demo: $(STAMP)
	$(BIN)/python -m hub.demo

$(BENCH_STAMP): $(STAMP)
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends wrk >/dev/null; } || \
		echo "wrk is not installed and cannot be installed here: the heartbeat and accept benchmarks need it"
	$(BIN)/python -m bench

soak: $(BENCH_STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	$(BIN)/python -m bench.soak

# Minutes: kill -9 the parent's parts under load, check invariants (CHAOS_SECONDS, default 600).
chaos: $(STAMP)
	$(BIN)/python -m chaos

# Mutation testing of the security-critical modules (not part of `make test`): BUDGET minutes.
mutate: $(STAMP)
	$(BIN)/python -m tests.harness.mutate $(if $(BUDGET),--budget-minutes $(BUDGET))

# A bootable child disk image (Debian packages + PyPI): deploy/child-image/build.sh; needs root.
child-image: $(STAMP)
	@command -v debootstrap >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq \
		--no-install-recommends debootstrap >/dev/null; } || { echo "child-image needs debootstrap"; exit 1; }
	PYTHON=$(BIN)/python deploy/child-image/build.sh $(CHILD_IMAGE_DIR)

clean:
	rm -rf $(VENV) .powernode .bench mutants $(CHILD_IMAGE_DIR)
