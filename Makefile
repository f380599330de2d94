# Every target does its own setup: a fresh clone needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dbkeel-installed

.PHONY: install demo test lint typecheck pytest example-tests bench bench-smoke failover services clean

# src/dbkeel_pytest.py too: an editable install copies it (it is outside the package)
$(STAMP): pyproject.toml src/dbkeel_pytest.py
	@if ! $(PYTHON) -m uv --version >/dev/null 2>&1; then $(PYTHON) -m pip install -q uv; fi
	$(PYTHON) -m uv venv -q --allow-existing -p $(PYTHON) $(VENV)
	$(PYTHON) -m uv pip install -q -p $(BIN)/python -e '.[dev]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dbkeel demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict src/dbkeel src/dbkeel_pytest.py

pytest: $(STAMP) services
	$(BIN)/pytest
	$(MAKE) --no-print-directory example-tests

# The example app's own tests, written on dbkeel's pytest plugin, on each database (the
# plugin creates <name>_test and drops it; the app's database is never touched).
example-tests: $(STAMP) services
	cd examples/notes && DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/dbkeel_notes ../../$(BIN)/pytest -q
	cd examples/notes && DATABASE_URL=mysql+asyncmy://root@127.0.0.1:3306/dbkeel_notes ../../$(BIN)/pytest -q
	cd examples/notes && DATABASE_URL=sqlite+aiosqlite:///$(CURDIR)/examples/notes/notes.sqlite3 ../../$(BIN)/pytest -q

test: lint typecheck pytest bench-smoke

# Start PostgreSQL and MariaDB if they are not running (the CI machine starts them, but a
# stopped one is started again here rather than failing the run).
services:
	@bash .ci/services

bench: $(STAMP) services
	$(BIN)/python -m benchmarks

# Every benchmark once at tiny sizes (figures meaningless): CI sees a benchmark that broke.
bench-smoke: $(STAMP) services
	DBKEEL_BENCH_SMOKE=1 $(BIN)/python -m benchmarks

# The failover figures (issue 14): a Patroni cluster whose primary's postmaster is killed
# under 50 writers, and a manual pg_ctl promote; gap, lost/duplicated commits, reads.
failover: $(STAMP) services
	$(BIN)/pytest tests/test_replicas_failover.py -q -s

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dbkeel.sqlite3*
