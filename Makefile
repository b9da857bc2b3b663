# The two set-up commands: each installs what is missing, then does its job.
#   make demo   the main job on the embedded platform
#   make test   the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml worker/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e './worker[model,test]'
	$(BIN)/transcription-worker assemble-model
	@# editable installs are not byte-compiled, and PYTHONDONTWRITEBYTECODE (set on many CI
	@# images) would make every opsctl process compile its modules again
	$(BIN)/python -m compileall -q opsctl stacks worker/transcription_worker >/dev/null
	@# promtool (Debian's prometheus package) checks the rendered monitoring config
	command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
	  >/dev/null; } || echo "promtool not installed: the promtool checks will be skipped"
	@# Alertmanager (Debian's prometheus-alertmanager) takes the health silences in the tests
	command -v prometheus-alertmanager >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager \
	  >/dev/null; } || echo "alertmanager not installed: the Alertmanager silence test will be skipped"
	@# PostgreSQL 15 (Debian's postgresql-15): the backup tests of an older server major
	test -x /usr/lib/postgresql/15/bin/pg_dump || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null; } \
	  || echo "postgresql-15 not installed: the PostgreSQL 15 backup tests will be skipped"
	touch $(STAMP)

install: $(STAMP)

demo: install
	bash scripts/demo.sh

# three pytest-xdist workers, each taking whole test files (--dist loadfile), so a module's
# fixtures (its own PostgreSQL, a worker) start once. Most tests wait on servers, not CPU, so
# on 2 cores a third worker fills those waits: the whole suite took 23 min 59 s and 23 min 44 s
# with 3 (two fresh clones, session 19) against 28 min 9 s with 2, every test passing each time
TEST_WORKERS ?= 3

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests

bench: install
	status=0; for b in tests/benchmarks/bench_*.py; do echo "## $$b"; $(BIN)/python $$b || status=1; done; exit $$status

clean:
	-$(BIN)/opsctl local down --purge
	rm -rf $(VENV) .pytest_cache
