# The two commands a newcomer needs: `make demo` and `make test`.
# Each installs what it needs (uv included) into ./.venv from the committed lock file.

PYTHON ?= python3
UV := .tools/bin/uv
WORKDIR ?= demo-workdir
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2

.PHONY: demo test test-fast check bench clean protos

# uv from a wheel whose sha256 PyPI lists for the pinned version (the site kit's install.sh does the same).
$(UV):
	$(PYTHON) -m venv .tools
	$(PYTHON) executors/kit_install.py > .tools/uv-requirements.txt
	.tools/bin/pip install --quiet --require-hashes --only-binary=:all: -r .tools/uv-requirements.txt

# --compile-bytecode: these machines set PYTHONDONTWRITEBYTECODE, so nothing would ever cache TensorFlow's and TFF's
# bytecode; compiled once here (8 s), `import tensorflow_federated` takes 3 s instead of 7-9 s.
.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --extra dev --compile-bytecode
	touch $@

demo: .venv/.synced
	.venv/bin/tffprod demo --workdir $(WORKDIR)

# `make test`: tests/unit, then the rest (tests/integration, tests/e2e, any other folder); `make test-fast`:
# tests/unit only (no TensorFlow, no worker processes: tests/unit/conftest.py checks), under 30 s. On
# $(PYTEST_WORKERS) xdist workers (PYTEST_WORKERS=0: one process); the second run keeps a file's tests on one
# worker (--dist loadfile), so its module fixtures (sites, workers) start once. Exit status 5 (PYTEST_ARGS
# selected no test in one of the two runs) does not stop `make test`.
PYTEST := .venv/bin/python -m pytest -n $(PYTEST_WORKERS)

test: .venv/.synced
	$(PYTEST) tests/unit $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PYTEST) --dist loadfile tests --ignore=tests/unit $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: .venv/.synced
	$(PYTEST) tests/unit $(PYTEST_ARGS)
	$(PYTEST) tests/contract -m "not e2e" $(PYTEST_ARGS)

# ruff, mypy and the import contracts (pyproject.toml). mypy and import-linter cannot follow the package-dir
# mapping, so the package is laid out under .check/ as installed (symlinks) and checked there.
check: .venv/.synced
	.venv/bin/ruff check tffprod executors registry cli examples tests setup.py
	rm -rf .check && mkdir -p .check/tffprod
	for entry in tffprod/*; do ln -s ../../$$entry .check/tffprod/$$(basename $$entry); done
	for dir in executors registry cli examples; do ln -s ../../$$dir .check/tffprod/$$dir; done
	cd .check && ../.venv/bin/mypy --config-file ../pyproject.toml tffprod
	cd .check && PYTHONPATH=. ../.venv/bin/lint-imports --config ../pyproject.toml

# Prints median seconds per round for the local, direct and gateway backends, then the site protocol's
# seconds, bytes per round per site and site memory, then secure aggregation's cost per round, then
# one-step user-level rounds against an in-memory floor, then tffprod local and remote beside TFF's own
# simulation of one task (s/round, start to round 1, 1-8 sites, 1M parameters, DP, memory, bytes; about
# 5-8 minutes on 2 cores) (benchmarks, no assertions).
bench: .venv/.synced
	.venv/bin/python -m tests.benchmarks.bench_backends
	.venv/bin/python -m tests.benchmarks.bench_approval
	.venv/bin/python -m tests.benchmarks.bench_secagg
	.venv/bin/python -m tests.benchmarks.bench_user_level
	.venv/bin/python -m tests.benchmarks.bench_vs_tff

clean:
	rm -rf .venv .tools $(WORKDIR) .pytest_cache

# Regenerates the release protocol's Python modules after tffprod/protocol/release.proto changes.
protos: .venv/.synced
	.venv/bin/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. tffprod/protocol/release.proto
