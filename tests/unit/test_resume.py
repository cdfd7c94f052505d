"""Resume and cancel, without training: ownership and registry claims (checkpoint files, which need
TensorFlow, are in integration/test_checkpoints.py)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tffprod.errors import RegistryError
from tffprod.registry import Registry
from tffprod.sessions.resume import cancel_session, coordinator_alive, resumable

ME = {"host": socket.gethostname(), "pid": os.getpid()}


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def registry(tmp_path: Path):
    with Registry.open(tmp_path / "tffprod.db") as registry:
        yield registry


def _session(registry: Registry, owner: dict) -> dict:
    row = registry.create_session(name="m", spec={"name": "m"}, task={}, backend="local", rounds_planned=3,
                                  datasets=["hospital-a/train:1"])
    return registry.start_session(row["id"], coordinator=owner)


def test_coordinator_alive() -> None:
    assert coordinator_alive(ME)
    assert not coordinator_alive({"host": ME["host"], "pid": _dead_pid()})
    assert coordinator_alive({"host": "another-host", "pid": 1})  # cannot see it: assumed alive
    assert not coordinator_alive(None)


def test_resumable(registry: Registry) -> None:
    live = _session(registry, ME)
    assert "is running in process" in resumable(live) and "session cancel" in resumable(live)
    gone = _session(registry, {"host": ME["host"], "pid": _dead_pid()})
    assert resumable(gone) is None
    registry.finish_session(live["id"], status="failed", error="x")
    assert resumable(registry.get_session(live["id"])) is None
    registry.finish_session(gone["id"], status="finished")
    assert resumable(registry.get_session(gone["id"])) == f"session {gone['id']} is finished"


def test_claim_takes_over_a_dead_coordinators_session_once(registry: Registry) -> None:
    dead = {"host": ME["host"], "pid": _dead_pid()}
    session = _session(registry, dead)
    registry.request_cancel(session["id"])
    claimed = registry.claim_session(session["id"], coordinator=ME, expected=dead)
    assert (claimed["status"], claimed["coordinator"], claimed["resumed"]) == ("running", ME, 1)
    assert claimed["cancel_requested_at"] is None
    with pytest.raises(RegistryError, match="claimed by another coordinator"):
        registry.claim_session(session["id"], coordinator={"host": "h", "pid": 2}, expected=dead)
    registry.finish_session(session["id"], status="finished")
    with pytest.raises(RegistryError, match="is finished"):
        registry.claim_session(session["id"], coordinator=ME, expected=ME)


def test_cancel_marks_a_live_session_and_ends_an_orphan(registry: Registry) -> None:
    live = _session(registry, ME)
    row = cancel_session(live["id"], registry=registry)
    assert row["status"] == "running" and row["cancel_requested_at"]
    orphan = _session(registry, {"host": ME["host"], "pid": _dead_pid()})
    row = cancel_session(orphan["id"], registry=registry)
    assert row["status"] == "cancelled" and "coordinator was gone" in row["error"]
    with pytest.raises(RegistryError, match="not running"):
        cancel_session(orphan["id"], registry=registry)
    assert [e["action"] for e in registry.list_audit()][0] == "session.end"


def test_rounds_commit_in_order_only(registry: Registry) -> None:
    session = _session(registry, ME)

    def record(n: int) -> dict:
        return registry.record_round(session["id"], round_num=n, metrics={}, participants=[], duration_s=0.1,
                                     epsilon=None, checkpoint=f"/c/{n}", checkpoint_sha256="0" * 64)

    record(1)
    with pytest.raises(RegistryError, match="round 3 cannot come next"):
        record(3)
    with pytest.raises(RegistryError, match="already has round 1"):
        record(1)
    assert record(2)["checkpoint"] == "/c/2"
    assert registry.get_session(session["id"])["rounds_completed"] == 2


def test_a_session_owned_on_another_host_resumes_only_with_force(registry: Registry) -> None:
    elsewhere = _session(registry, {"host": "another-host", "pid": 4242})
    reason = resumable(elsewhere)
    assert "on another-host" in reason and "--force" in reason
    assert resumable(elsewhere, force=True) is None
    here = _session(registry, ME)
    assert resumable(here, force=True) is not None  # a live coordinator on this host is never taken over
