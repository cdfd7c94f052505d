# The two commands a newcomer needs: `make demo` and `make test`.
# Each installs what it needs (uv included) into ./.venv from the committed lock file.

PYTHON ?= python3
UV := .tools/bin/uv
WORKDIR ?= demo-workdir
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench clean protos

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==0.13.9"

.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --extra dev
	touch $@

demo: .venv/.synced
	.venv/bin/tffprod demo --workdir $(WORKDIR)

test: .venv/.synced
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-fast: .venv/.synced
	.venv/bin/python -m pytest -m "not e2e" $(PYTEST_ARGS)

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
