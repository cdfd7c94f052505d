"""The fault-injection suite: kill, stop and restart real processes mid-session.

Coordinator faults run ``tffprod session run`` as its own process and SIGKILL it at
named crash points (``TFFPROD_CRASH_AT``, see ``tffprod.training.faults``) or from outside,
mid-round; ``tffprod session resume`` must then finish the session with every round
recorded exactly once, the same epsilon, and (without DP) the same final weights
as an uninterrupted run. Site faults SIGKILL and SIGSTOP site workers and gateways
and restart gateways under a running session.

Each scenario adds to a tally, printed as one line at the end of the module:
faults injected, sessions completed, rounds lost beyond the one in flight, rounds
double-counted. Each scenario also asserts its own part of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tffprod.privacy.accounting import epsilon_for
from tffprod.examples import digits
from tffprod.registry import Registry

from .conftest import write_spec

pytestmark = pytest.mark.e2e

ROUNDS = 4
DP = {"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5}
TFFPROD = str(Path(sys.executable).parent / "tffprod")
_MARKER = "TFFPROD_FAULT_SUITE"


@pytest.fixture
def tally(fault_tally):
    return fault_tally


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A registry with the digits sites' data, the specs, and an uninterrupted run's weights."""
    root = tmp_path_factory.mktemp("faults")
    from tffprod.data.register import register_dataset

    paths = digits.prepare(root / "data")
    with Registry.open(root / "tffprod.db") as registry:
        for site in digits.SITES:
            for split in ("train", "test"):
                register_dataset(registry, f"{site}/{split}", paths[site][split], schema=digits.SCHEMA)
    common = {"task": "tffprod.examples.digits:task", "datasets": [f"{s}/train" for s in digits.SITES],
              "eval_datasets": [f"{digits.SITES[0]}/test"], "rounds": ROUNDS, "seed": 0, "backend": "local"}
    specs = {"plain": write_spec(root / "plain.toml", name="faults", **common),
             "dp": write_spec(root / "dp.toml", name="faults-dp", dp=DP, **common),
             "long": write_spec(root / "long.toml", name="faults-long", **{**common, "rounds": 20})}
    baseline = _cli(root, "session", "run", "--spec", specs["plain"], "--json")
    assert baseline.returncode == 0, baseline.stderr
    weights = _weights(json.loads(baseline.stdout)["model_version"]["artifact_path"])
    return root, specs, weights


def _cli(root: Path, *args: str, crash_at: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([TFFPROD, *args, "--registry", str(root / "tffprod.db")], capture_output=True, text=True,
                          timeout=timeout, env=_env(crash_at))


def _env(crash_at: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TFFPROD_CRASH_AT"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", GRPC_VERBOSITY="ERROR", **{_MARKER: str(os.getpid())})
    if crash_at:
        env["TFFPROD_CRASH_AT"] = crash_at
    return env


def _weights(artifact: str) -> dict:
    with np.load(Path(artifact) / "weights.npz") as archive:
        return {key: archive[key] for key in archive.files}


def _worker_pids() -> set[int]:
    """worker_binary processes started by this suite's coordinators (they inherit its marker variable)."""
    pids = set()
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "worker_binary" in " ".join(proc.info["cmdline"] or []) and \
                    proc.environ().get(_MARKER) == str(os.getpid()):
                pids.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return pids


def _no_new_workers(before: set[int], timeout_s: float = 10.0) -> None:
    """Workers of a killed coordinator die with it (PR_SET_PDEATHSIG); wait for the kernel to reap them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [pid for pid in _worker_pids() - before if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        if not left:
            return
        time.sleep(0.2)
    raise AssertionError(f"worker processes outlived their coordinator: {left}")


def _sessions(root: Path, status: str | None = None) -> list[dict]:
    with Registry.open(root / "tffprod.db") as registry:
        return registry.list_sessions(status=status)


def _newest_session(root: Path) -> dict:
    return _sessions(root)[0]


def _resume(root: Path, session_id: str, tally: dict, *, crash_at: str | None = None) -> subprocess.CompletedProcess:
    result = _cli(root, "session", "resume", session_id, "--json", crash_at=crash_at)
    if result.returncode == 0:
        tally["completed"] += 1
    return result


def _check_complete(root: Path, session_id: str, tally: dict, *, rounds: int = ROUNDS, dp: bool) -> dict:
    """Every round recorded once, the privacy spend and epsilon of exactly ``rounds`` rounds."""
    with Registry.open(root / "tffprod.db") as registry:
        session = registry.get_session(session_id)
        recorded = [r["round_num"] for r in registry.list_rounds(session_id)]
        spend = [s for report in registry.privacy_report() for s in report["sessions"]
                 if s["session_id"] == session_id]
        last = registry.list_rounds(session_id)[-1]
    double = len(recorded) - len(set(recorded)) + sum(max(0, s["rounds"] - rounds) for s in spend)
    tally["double"] += double
    assert session["status"] == "finished" and recorded == list(range(1, rounds + 1)) and double == 0
    if dp:
        expected = epsilon_for(noise_multiplier=DP["noise_multiplier"], rounds=rounds, delta=DP["delta"])
        assert spend and all(s["rounds"] == rounds and s["epsilon"] == pytest.approx(expected, rel=1e-9)
                             for s in spend)
        assert last["epsilon"] == pytest.approx(expected, rel=1e-9)
    return session


def _crash(root: Path, tally: dict, args: list[str], crash_at: str, committed: int) -> dict:
    """Run ``tffprod ARGS`` until it kills itself at ``crash_at``; check what it left committed."""
    workers = _worker_pids()
    crashed = _cli(root, *args, crash_at=crash_at)
    tally["faults"] += 1
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    _no_new_workers(workers)
    session = _newest_session(root)
    tally["lost"] += max(0, committed - session["rounds_completed"])
    assert session["status"] == "running" and session["rounds_completed"] == committed, crash_at
    return session


def test_coordinator_killed_at_every_crash_point_resumes_to_the_same_weights(workspace, tally):
    """One session, killed at each crash point in turn (resumes included), then a damaged
    checkpoint; the final weights equal the uninterrupted run's."""
    root, specs, baseline = workspace
    session = _crash(root, tally, ["session", "run", "--spec", specs["plain"]], "checkpoint-partial:1", 0)
    sid = session["id"]
    checkpoints = root / "artifacts" / "faults" / sid / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["round-00001.npz.tmp"]  # half written, never committed
    show = json.loads(_cli(root, "session", "show", sid, "--json").stdout)
    assert show["resumable"] is True
    _crash(root, tally, ["session", "resume", sid], "checkpoint-written:1", 0)
    _crash(root, tally, ["session", "resume", sid], "round-committed:2", 2)

    # A committed checkpoint damaged on disk: resume refuses in one line and changes nothing.
    checkpoint, _ = _last_checkpoint(root, sid)
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(good[: len(good) // 2])
    tally["faults"] += 1
    before = _newest_session(root)
    refused = _cli(root, "session", "resume", sid)
    assert refused.returncode == 13
    message = refused.stderr.strip()
    assert len(message.splitlines()) == 1 and "is damaged" in message and checkpoint.name in message
    assert _newest_session(root) == before
    checkpoint.write_bytes(good)  # the operator restores the file from a backup

    _crash(root, tally, ["session", "resume", sid], "round-start:3", 2)
    resumed = _resume(root, sid, tally)
    assert resumed.returncode == 0, resumed.stderr
    finished = _check_complete(root, sid, tally, dp=False)
    assert finished["resumed"] == 4
    weights = _weights(json.loads(resumed.stdout)["model_version"]["artifact_path"])
    assert all(np.array_equal(weights[k], baseline[k]) for k in baseline)
    leftovers = sorted(p.name for p in checkpoints.iterdir())
    assert leftovers == [f"round-{ROUNDS - 1:05d}.npz", f"round-{ROUNDS:05d}.npz"]
    _check_events(root, sid, "faults")  # round 2's, lost with the coordinator killed after its commit, included


def _check_events(root: Path, session_id: str, name: str) -> None:
    """The session's TensorBoard event files, written by each coordinator that ran it, hold every committed
    round once with the registry's values, and the evaluation."""
    from ..helpers.tensorboard import assert_events_equal_registry

    with Registry.open(root / "tffprod.db") as registry:
        rounds = registry.list_rounds(session_id)
        evaluations = registry.list_evaluations(name, None, kind=None)
    assert_events_equal_registry(root / "artifacts" / name / session_id / "tensorboard", rounds,
                                 [e for e in evaluations if e["session_id"] == session_id])


def test_a_dp_session_resumed_counts_each_rounds_epsilon_once(workspace, tally):
    root, specs, _ = workspace
    session = _crash(root, tally, ["session", "run", "--spec", specs["dp"]], "checkpoint-written:2", 1)
    resumed = _resume(root, session["id"], tally)
    assert resumed.returncode == 0, resumed.stderr
    _check_complete(root, session["id"], tally, dp=True)
    _check_events(root, session["id"], "faults-dp")


def test_coordinator_killed_from_outside_mid_round(workspace, tally):
    """SIGKILL from outside while a round runs: no committed round is lost."""
    root, specs, baseline = workspace
    workers = _worker_pids()
    proc = subprocess.Popen([TFFPROD, "session", "run", "--spec", specs["plain"], "--registry",
                             str(root / "tffprod.db")], env=_env(None), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    seen = 0
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            sessions = [s for s in _sessions(root) if s["coordinator"] and s["coordinator"]["pid"] == proc.pid]
            if sessions and sessions[0]["rounds_completed"] >= 1:
                seen = sessions[0]["rounds_completed"]
                time.sleep(0.1)  # into round 2 (rounds after the first take ~0.4 s here)
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    tally["faults"] += 1
    _no_new_workers(workers)
    session = _newest_session(root)
    assert session["coordinator"]["pid"] == proc.pid and seen >= 1
    tally["lost"] += max(0, seen - session["rounds_completed"])
    assert session["rounds_completed"] >= seen
    resumed = _resume(root, session["id"], tally)
    assert resumed.returncode == 0, resumed.stderr
    _check_complete(root, session["id"], tally, dp=False)
    weights = _weights(json.loads(resumed.stdout)["model_version"]["artifact_path"])
    assert all(np.array_equal(weights[k], baseline[k]) for k in baseline)


def _last_checkpoint(root: Path, session_id: str) -> tuple[Path, str]:
    with Registry.open(root / "tffprod.db") as registry:
        last = registry.list_rounds(session_id)[-1]
    return Path(last["checkpoint"]), last["checkpoint_sha256"]


def test_cancel_stops_at_a_round_boundary_then_export_and_resume(workspace, tally, tmp_path):
    root, specs, _ = workspace
    proc = subprocess.Popen([TFFPROD, "session", "run", "--spec", specs["long"], "--registry",
                             str(root / "tffprod.db"), "--json"], env=_env(None), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        session_id = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and session_id is None:
            for s in _sessions(root, status="running"):
                if s["coordinator"] and s["coordinator"]["pid"] == proc.pid and s["rounds_completed"] >= 1:
                    session_id = s["id"]
            time.sleep(0.05)
        assert session_id, "the session never committed a round"
        cancel = _cli(root, "session", "cancel", session_id)
        assert cancel.returncode == 0 and "cancel requested" in cancel.stdout
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    row = json.loads(out)
    assert row["status"] == "cancelled" and 1 <= row["rounds_completed"] < 20
    assert "cancelled after round" in row["error"]

    exported = _cli(root, "session", "export", session_id, "--out", str(tmp_path / "model"), "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["round"] == row["rounds_completed"]
    # The layout of model export: the directory is the SavedModel, its card inside.
    assert (tmp_path / "model" / "saved_model.pb").is_file()
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["lineage"]["session"] == {**card["lineage"]["session"], "id": session_id,
                                          "rounds_completed": row["rounds_completed"]}
    assert "(not a registered version)" in (tmp_path / "model" / "model_card.md").read_text()
    loaded = subprocess.run([sys.executable, "-c", "import sys, tensorflow as tf; "
                             "print(list(tf.saved_model.load(sys.argv[1]).signatures))", str(tmp_path / "model")],
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0 and "serving_default" in loaded.stdout, loaded.stderr
    again = _cli(root, "session", "export", session_id, "--out", str(tmp_path / "model"))
    assert again.returncode != 0 and "already exists" in again.stderr  # nothing overwritten

    resumed = _resume(root, session_id, tally)
    assert resumed.returncode == 0, resumed.stderr
    _check_complete(root, session_id, tally, rounds=20, dp=False)
    shutil.rmtree(tmp_path / "model")
