# enginehost developer commands. Each target builds the virtual environment on first use,
# so on a fresh machine `make serve` and `make test` are all it takes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BRIDGES_STAMP := $(VENV)/.bridges-installed
BRIDGE_LOCKS := $(wildcard enginehost/plugins/*/sidecar/package-lock.json)
PYTEST_ARGS ?=

.PHONY: install bridges serve test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "enginehost needs Python >= 3.11; set PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

# The bridges' Node sidecars (npm ci from their lock files); redone when a lock changes.
bridges: $(BRIDGES_STAMP)

$(BRIDGES_STAMP): $(STAMP) $(BRIDGE_LOCKS)
	$(BIN)/enginehost bridges install
	@touch $(BRIDGES_STAMP)

# Run the daemon on its embedded defaults (127.0.0.1:2785, data in ./data). Ctrl-C stops it.
# Without Node.js the bridges cannot install; the daemon still runs (the sandbox works,
# and `enginehost plugins list` says what the bridges need).
serve: $(STAMP)
	@$(MAKE) --no-print-directory bridges || echo "make serve: bridge engines not installed (see above); serving without them" >&2
	$(BIN)/enginehost serve

# Run the test suite. pytest's exit code 5 (no tests collected) is a failure here:
# a suite that silently ran nothing must never pass.
test: $(BRIDGES_STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; exit 1; fi; \
	exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy enginehost

bench: $(STAMP)
	$(BIN)/python bench/cold_start.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/inbound.py
	$(BIN)/python bench/send.py
	$(BIN)/python bench/sessions.py
	$(BIN)/python bench/baileys.py
	$(BIN)/python bench/webjs.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
