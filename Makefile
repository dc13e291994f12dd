# The README's two commands: `make demo` runs the main job, `make test` runs the tests.
# Both work on a fresh clone with only Python installed: they create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU wheel these machines carry, so nothing pulls a CUDA build.
TORCH ?= torch==2.13.0
# The versions the suite was last green with (see its header); `make test CONSTRAINTS=/dev/null` resolves afresh.
CONSTRAINTS ?= constraints.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile $(CONSTRAINTS) | cksum | cut -d' ' -f1)

.PHONY: demo test bench browsers postgres clean

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/modalign demo

# MODALIGN_REQUIRE_POSTGRES: the PostgreSQL tests fail, not skip, when the server `make postgres` installed cannot start.
# Two pytest-xdist workers of one torch thread each (tests/conftest.py: work units, longest first); more threads
# per worker oversubscribe 2 cores.
test: $(STAMP) browsers postgres
	OMP_NUM_THREADS=1 MODALIGN_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -q -n 2

# TRL is a bench-only extra (`.[bench]`), installed here and not by `make test`.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev,bench]"
	$(BIN)/python bench/run.py

# Debian's chromium for the browser tests (Playwright drives /usr/bin/chromium; it never downloads its own).
browsers:
	@command -v chromium >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Debian's PostgreSQL server for the store tests (tests/pg_server.py runs initdb + pg_ctl in a temp folder;
# the package's own cluster is not used).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

clean:
	rm -rf $(VENV) .pytest_cache
