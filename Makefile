# bumps-mpi: `make demo` runs a real fit here; `make test` runs the whole suite on a real Slurm cluster.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
DEMO_ARGS ?= --seed 1 --samples 10000

.PHONY: venv demo test test-local test-mpi bench lint docs cluster cluster-stop database test-tools clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,service,postgres,docs]'
	touch $@

venv: $(VENV)/.installed

## demo: a DREAM fit of examples/peak.py under mpiexec -n 2 (no Slurm), its status, results and report
demo: venv
	$(BIN)/bumps-submit submit examples/peak.py --local -n 2 $(DEMO_ARGS) --jobs-dir bumps-jobs
	$(BIN)/bumps-submit status --limit 3
	@echo "report (open it in a browser):"
	@$(BIN)/bumps-submit report "$$($(BIN)/bumps-submit status --limit 1 --json | $(PY) -c 'import json, sys; print(json.load(sys.stdin)[0]["job_dir"])')"

# the mapper's in-process tests (tests/mpi) on every rank of one MPI job (pytest-mpi); only rank 0 reports,
# each test shares its verdict across ranks; no .pytest_cache (the ranks would race on it); `timeout`: a
# rank lost in a collective must fail make, not hang it
MPI_PYTEST := $(PY) -m pytest --with-mpi -p no:cacheprovider -q -ra tests/mpi
MPI_TIMEOUT := timeout 300

## test: start the project's Slurm cluster (root: installs it on first use) and run every test;
## Slurm, MPI and browser tests fail instead of skipping when their cluster, runtime or browser is missing
test: venv cluster database test-tools
	BUMPS_MPI_REQUIRE_CLUSTER=1 $(PY) -m pytest -ra
	$(MPI_TIMEOUT) $(BIN)/mpiexec -n 2 $(MPI_PYTEST)
	$(MPI_TIMEOUT) $(BIN)/mpiexec -n 3 $(MPI_PYTEST)

## test-local: the tests that need no Slurm (Slurm tests skip), then the in-process MPI tests; no root needed
test-local: venv
	$(PY) -m pytest -ra
	$(MPI_TIMEOUT) $(BIN)/mpiexec -n 2 $(MPI_PYTEST)
	$(MPI_TIMEOUT) $(BIN)/mpiexec -n 3 $(MPI_PYTEST)

## test-mpi: only the in-process MPI tests, under mpiexec -n 2 and -n 3 (a few seconds)
test-mpi: venv
	$(MPI_TIMEOUT) $(BIN)/mpiexec -n 2 $(MPI_PYTEST)
	$(MPI_TIMEOUT) $(BIN)/mpiexec -n 3 $(MPI_PYTEST)

## bench: mapper per-call times and ratios (2 and 4 ranks), then a real refl1d DREAM fit, serial vs 2 ranks
## (installs the bench extra: refl1d, which pins bumps==1.0.4)
bench: venv
	$(PY) -m pip install --quiet -e '.[test,service,postgres,bench]'
	$(PY) bench/mapper_bench.py
	$(PY) bench/startup_bench.py
	$(PY) bench/refl1d_bench.py
	$(PY) bench/figures_bench.py
	$(PY) bench/sandbox_bench.py
	$(PY) bench/service_bench.py
	$(PY) bench/dispatch_bench.py
	$(PY) bench/streams_bench.py
	$(PY) bench/sasmodels_bench.py
	$(PY) bench/estimate_bench.py  # the estimate against local runs (about 10 min)
	$(PY) bench/hosts_bench.py  # needs the cluster's hosts (make cluster)

lint: venv
	$(BIN)/ruff check src tests examples bench docs
	$(BIN)/ruff format --check src tests examples bench docs
	$(BIN)/mypy

## docs: the documentation site into docs/_build/html (open index.html); every Sphinx warning is an error.
## The references are written from the code as it builds: commands, Python API, HTTP API, settings
docs: venv
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

cluster:
	SLURM_HOSTS=3 scripts/slurm-cluster start  # the one-node partitions, and hosts h1-h3 (several-node tests)

## database: the PostgreSQL server the dispatcher's tests also run against (root: installs it on first use)
database:
	scripts/postgres-server start

## test-tools: Debian's chromium and chromium-driver (the report's browser test) and apparmor (parses the
## sandbox's AppArmor profile); root, nothing downloaded from elsewhere
test-tools:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
	    || ! command -v apparmor_parser >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    -o DPkg::Lock::Timeout=600 chromium chromium-driver apparmor; \
	  else echo "make test-tools: run as root to install chromium, chromium-driver and apparmor"; fi; fi

cluster-stop:
	scripts/slurm-cluster stop

clean:
	rm -rf $(VENV) bumps-jobs .pytest_cache docs/_build docs/_generated
