"""No leaked processes: a stopped or killed coordinator takes its workers with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tffprod.data.register import register_dataset
from tffprod.examples import digits
from tffprod.registry import Registry

pytestmark = pytest.mark.e2e

TFFPROD = str(Path(sys.executable).with_name("tffprod"))


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _workers_of(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "worker_binary" in " ".join(c.cmdline())]


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def long_session(tmp_path):
    """A registry and a spec for a session far longer than any test waits for."""
    paths = digits.prepare(tmp_path / "data")
    db = tmp_path / "tffprod.db"
    with Registry.open(db) as registry:
        for site in digits.SITES:
            register_dataset(registry, f"{site}/train", paths[site]["train"], schema=digits.SCHEMA)
    spec = tmp_path / "long.toml"
    spec.write_text(
        'name = "long"\ntask = "tffprod.examples.digits:task"\n'
        'datasets = ["hospital-a/train", "hospital-b/train", "hospital-c/train"]\nrounds = 1000\n'
    )
    return db, spec


def _start(db: Path, spec: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    proc = subprocess.Popen([TFFPROD, "session", "run", "--spec", str(spec), "--registry", str(db), "--json"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = _wait_for(lambda: len(_workers_of(proc.pid)) == 4 and _workers_of(proc.pid), 180, "4 workers")

    def first_round_recorded():
        with Registry.open(db) as registry:
            sessions = registry.list_sessions()
            return sessions and sessions[0]["rounds_completed"] >= 1

    _wait_for(first_round_recorded, 180, "the first round")
    return proc, workers


@pytest.fixture
def started(long_session):
    """The session process, killed at teardown if a test left it running."""
    db, spec = long_session
    holder = {}
    yield lambda: holder.setdefault("run", _start(db, spec))
    proc = holder.get("run", (None,))[0]
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def test_sigterm_cancels_the_session_and_stops_every_worker(long_session, started):
    db, _ = long_session
    proc, workers = started()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Error: interrupted" in stderr
    _wait_for(lambda: all(_gone(w) for w in workers), 20, "workers to exit")
    with Registry.open(db) as registry:
        (session,) = registry.list_sessions()
        assert session["status"] == "cancelled"
        assert session["rounds_completed"] == len(registry.list_rounds(session["id"])) >= 1


def test_sigkill_of_the_coordinator_takes_its_workers_down(started):
    proc, workers = started()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # The kernel kills each worker when the coordinator dies (PR_SET_PDEATHSIG).
    _wait_for(lambda: all(_gone(w) for w in workers), 20, "workers to exit")
