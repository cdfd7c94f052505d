# The two commands a newcomer needs: `make demo` and `make test`.
# Each installs what it needs (uv included) into ./.venv from the committed lock file.

PYTHON ?= python3
UV := .tools/bin/uv
WORKDIR ?= demo-workdir
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2

.PHONY: demo test test-fast bench clean protos

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==0.13.9"

.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --extra dev
	touch $@

demo: .venv/.synced
	.venv/bin/tffprod demo --workdir $(WORKDIR)

# `make test`: the unit tests, then tests/integration and tests/e2e on $(PYTEST_WORKERS) xdist workers (a file's
# tests stay on one worker, so a module's sites start once). Exit status 5 (PYTEST_ARGS selected no test in a
# step) does not stop the other step.
test: .venv/.synced
	.venv/bin/python -m pytest tests/unit $(PYTEST_ARGS) || [ $$? -eq 5 ]
	.venv/bin/python -m pytest tests/integration tests/e2e -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) || [ $$? -eq 5 ]

# `make test-fast`: tests/unit only, no TensorFlow and no worker processes (tests/unit/conftest.py checks both
# ends of the run), about half a minute.
test-fast: .venv/.synced
	.venv/bin/python -m pytest tests/unit $(PYTEST_ARGS)

# Prints median seconds per round for the local, direct and gateway backends, then the site protocol's
# seconds, bytes per round per site and site memory (benchmarks, no assertions).
bench: .venv/.synced
	.venv/bin/python -m tests.benchmarks.bench_backends
	.venv/bin/python -m tests.benchmarks.bench_approval

clean:
	rm -rf .venv .tools $(WORKDIR) .pytest_cache

# Regenerates the release protocol's Python modules after tffprod/protocol/release.proto changes.
protos: .venv/.synced
	.venv/bin/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. tffprod/protocol/release.proto
