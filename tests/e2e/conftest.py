"""Fixtures for end-to-end tests: real TFF, real worker processes, real SQLite files."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def worker_children() -> list[psutil.Process]:
    """worker_binary processes descended from this test process (an isolated site worker's relay,
    ``tffprod.workers.isolation``, lives and dies with its worker and is not listed)."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "worker_binary":
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


@pytest.fixture
def fault_tally(request):
    """The fault-injection suite's counts (tests/e2e/test_*faults.py), printed as one line at the end.

    Each test counts into its own dict, handed to the report as a user property at teardown: the
    run's total is summed from the reports (tests/conftest.py), so it holds with xdist workers too.
    """
    tally = {"faults": 0, "completed": 0, "lost": 0, "double": 0}
    yield tally
    request.node.user_properties.append(("fault_tally", tally))


def write_spec(path, **fields) -> str:
    from tffprod.sessions.spec import SessionSpec, dump_spec

    dump_spec(SessionSpec.from_dict(fields), path)
    return str(path)


@contextlib.contextmanager
def running_federation(root: Path, datasets: dict, *, computations: str = "any", federations=None):
    """Real site processes (gateway + worker, mTLS) for ``datasets`` and a registry that knows them.

    Sites run any computation unless ``computations="approved"`` (then only approved plans).

    Yields ``(federation, registry)``; afterwards every site process and its worker are gone.
    """
    from tffprod.dev.local_sites import LocalFederation
    from tffprod.registry import Registry

    workers_before = {p.pid for p in worker_children()}
    fed = LocalFederation(root / "fed", datasets, computations=computations, federations=federations)
    fed.prepare()
    fed.start()
    site_pids = list(fed.pids().values())
    registry = Registry.open(root / "remote.db")
    try:
        fed.register(registry)
        yield fed, registry
    finally:
        registry.close()
        fed.stop()
    for pid in site_pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert [p for p in worker_children() if p.pid not in workers_before] == []


def read_file_computation():
    """The facts note's attack (section 6): read the file each CLIENTS string names and return its bytes."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_federated as tff

    @tff.tensorflow.computation(np.str_)
    def read_file(ref):
        return tf.io.read_file(ref)

    @tff.federated_computation(tff.FederatedType(np.str_, tff.CLIENTS))
    def leak(refs):
        return tff.federated_map(read_file, refs)

    return leak
