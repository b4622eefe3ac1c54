# Two commands do all the set-up: `make demo` and `make test`.
# Both (re)build .venv when it is missing or older than pyproject.toml: `make demo` installs
# the package and its proxy extra (seconds), `make test` the `dev` and `docs` dependency groups
# (PEP 735) as well (the suite builds the documentation site and opens it in a browser:
# tests/test_docs_site.py).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: demo test docs docs-serve dist-check lint typecheck unit real-clients sdk-suite matrix bench bench-smoke soak soak-memory soak-memory-unguarded soak-smoke clean

# The development tools: pip >= 25.1 installs dependency groups (--group).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --group dev --group docs -e .
	@touch $(STAMP)

# The demo needs the package (the fake server is part of it) and its proxy extra (aiohttp, a few
# MB) for the proxy's rows, so any pip will do. It installs no npm client: it runs Claude Code
# only when `make real-clients` or the user installed it, else the TypeScript SDK, curl, Python.
# --no-compile: Python compiles what the demo imports, not every module installed (seconds).
$(DEMO_STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[proxy]'
	@touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python -m sdkguard demo

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check sdkguard tests benchmarks tools startup
	$(BIN)/ruff format --check sdkguard tests benchmarks tools startup

typecheck: $(STAMP)
	$(BIN)/mypy --strict sdkguard startup/_sdkguard_startup.py tests/realclients.py

# The suite in parallel (pytest-xdist): a worker per core, each a process of its own, so the
# tests that set process-wide state (retry budget, environment, OpenTelemetry) stay apart.
unit: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist worksteal

# The real-client tests alone (docs/testing.md): the TypeScript SDK, Claude Code and curl
# against the fake server. `make unit` runs them too. The first run installs the npm packages
# pinned in tests/clients into .cache/real-clients (npm's cache in .cache/npm), and again only
# when the lock changes; without node and npm the tests are skipped.
real-clients: $(STAMP)
	$(BIN)/python -m pytest -m real_clients

# The documentation site (mkdocs.yml): built into .cache/site, strict (a broken link or a missing
# reference fails it); `make docs-serve` serves it on 127.0.0.1:8000 and rebuilds on change.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir .cache/site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# Maintainers, before a release: build the sdist and wheel, `twine check --strict` them, install
# the wheel into a fresh venv (.cache/dist-check) and run the quick start, the console script and
# the pytest fixture from outside the source tree.
dist-check: $(STAMP)
	$(BIN)/python tools/check_dist.py

# The benchmarks' own dependency group (tenacity, stamina, matplotlib), on top of `dev`.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --group bench
	@touch $(BENCH_STAMP)

# The SDK's own suite, plain and guarded: the installed (newest) release by default;
# SDK="0.93.0 newest" for several, SDK=all for every release of the matrix.
SDK ?= newest
sdk-suite: $(STAMP)
	$(BIN)/python tools/sdk_suite.py $(foreach v,$(SDK),--version $(v))

# sdkguard's suite on every supported SDK release and Python (docs/compatibility.md);
# MATRIX="--full" for every pair, MATRIX="--sdk 0.93.0 --python 3.10" for some.
matrix: $(STAMP)
	$(BIN)/python tools/matrix.py $(MATRIX)

# Every benchmark; writes benchmarks/RESULTS.md, benchmarks/timeline.png and the headline
# figures of docs/benchmarks.md (about 10 minutes on a quiet machine, 20 on a heavily loaded one).
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/plain_calls.py

# CI: every benchmark at tiny sizes, report and chart into .cache/bench-smoke, so the scripts
# cannot rot.
bench-smoke: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py --quick --out .cache/bench-smoke
	$(BIN)/python benchmarks/plain_calls.py --quick

# The chaos soak (docs/soak.md): 2,000 calls under faults, each checked against what the server
# sent; writes its figures into docs/proof.md when everything holds.
soak: $(STAMP)
	$(BIN)/python tools/soak.py --calls 2000 --readme docs/proof.md

# Memory over 10,000 calls (RSS and tracemalloc): several minutes, not in CI. A fixed mmap
# threshold, so that glibc returns the 10 MB answers' buffers and RSS shows what is held.
soak-memory: $(STAMP)
	MALLOC_MMAP_THRESHOLD_=1048576 $(BIN)/python tools/soak.py --memory-calls 10000 --readme docs/proof.md

# The same memory run with the SDK alone (sdkguard not installed): whose growth it is.
soak-memory-unguarded: $(STAMP)
	MALLOC_MMAP_THRESHOLD_=1048576 $(BIN)/python tools/soak.py --memory-calls 10000 --unguarded

# CI: a short soak (under a minute), so that a regression shows and the tool cannot rot.
soak-smoke: $(STAMP)
	$(BIN)/python tools/soak.py --calls 500

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .cache
