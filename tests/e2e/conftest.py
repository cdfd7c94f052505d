"""Fixtures for end-to-end tests: real TFF, real worker processes, real SQLite files."""

from __future__ import annotations

import os

import psutil
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def worker_children() -> list[psutil.Process]:
    """worker_binary processes descended from this test process."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "worker_binary" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(autouse=True)
def no_leaked_workers():
    """Every e2e test must end every worker it started (module fixtures' sites excepted)."""
    before = {p.pid for p in worker_children()}
    yield
    leaked = [p for p in worker_children() if p.pid not in before]
    assert not leaked, f"test left worker processes running: {[p.pid for p in leaked]}"


def write_spec(path, **fields) -> str:
    from tffprod.spec import SessionSpec, dump_spec

    dump_spec(SessionSpec.from_dict(fields), path)
    return str(path)
