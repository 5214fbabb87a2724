# meta-ota / ota_build developer entry points. Everything runs in ./.venv,
# created on first use from PyPI; nothing is installed system-wide.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-test
SSTAMP  = $(VENV)/.installed-server
# pytest-xdist processes for `make test` (auto: one per CPU; 0: no workers, all in this process).
# Whole files go to one worker (--dist loadfile), so a file's module-scoped server is started once.
TEST_WORKERS ?= auto
# pytest's tmp_path (servers' data and SQLite files included) on tmpfs when /dev/shm is writable, lets
# scripts run and has 2 GiB free: on a disk every SQLite commit and rewritten file waits for it.
# TEST_TEMPROOT= keeps them under $$TMPDIR.
TEST_TEMPROOT ?= $(shell d=/dev/shm; f=$$(mktemp -p $$d ota-test-XXXXXX 2>/dev/null) || exit 0; \
	printf '\043!/bin/sh\n' > $$f; chmod +x $$f; ok=$$($$f 2>/dev/null && echo y); rm -f $$f; \
	[ "$$ok" = y ] && [ "$$(df -Pk $$d | awk 'NR==2{print $$4}')" -gt 2097152 ] && echo $$d)

.PHONY: demo test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(SSTAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server]'
	touch $(SSTAMP)

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP) $(SSTAMP)

## demo: the whole journey on a generated sample image (prints each step)
demo: $(SSTAMP)
	rm -rf demo-output
	$(BIN)/ota-build demo --workdir demo-output
	$(BIN)/ota-build coap-demo --workdir demo-output/coap

## test: lint (ruff, mypy) and the test-suite (CI runs exactly this)
test: $(STAMP)
	$(BIN)/ruff check ota_build tests benchmarks
	$(BIN)/mypy ota_build
	PYTEST_DEBUG_TEMPROOT=$(TEST_TEMPROOT) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

## bench: speed and memory benchmarks (1 GiB image; see benchmarks/README.md)
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_package.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis

## lint: ruff and mypy over the library, tests and benchmarks
lint: $(STAMP)
	$(BIN)/ruff check ota_build tests benchmarks
	$(BIN)/mypy ota_build
