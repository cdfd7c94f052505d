"""``session run --plan`` with the coordinator's computations from the plan cache, against building them.

The same plan content runs once from a cache hit and once with the cache emptied (the coordinator then
builds the training process as before): the final weights are bitwise equal, a session started on one
path resumes on the other to the same weights, and a DP session from the cache accounts the same
epsilon. Local backend, digits, 2 rounds each.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from tffprod.backends.local import LocalBackend
from tffprod.errors import SessionError
from tffprod.examples import digits
from tffprod.privacy.accounting import epsilon_for
from tffprod.registry import Registry
from tffprod.sessions import plan_cache
from tffprod.sessions.approval import make_plan, write_plan
from tffprod.sessions.planning import plan_session
from tffprod.sessions.resume import resume_session
from tffprod.sessions.runner import artifacts_dir_for, train_from_plan
from tffprod.sessions.spec import SessionSpec

pytestmark = pytest.mark.e2e

ROUNDS = 2
SITES = digits.SITES[:2]
DP = {"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5}
HIT = "coordinator computations: from the plan cache"
BUILT = "coordinator computations: built from the task"


class Stop(Exception):
    """Stops a session after its first round (it is then recorded as failed, and resumable)."""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A registry with two digits sites' training data, and a plan maker that fills the plan cache."""
    from tffprod.data.register import register_dataset

    root = tmp_path_factory.mktemp("coordinator-cache")
    paths = digits.prepare(root / "data")
    registry = Registry.open(root / "tffprod.db")
    for site in SITES:
        register_dataset(registry, f"{site}/train", paths[site]["train"], schema=digits.SCHEMA)
    cache = artifacts_dir_for(registry.path) / plan_cache.DIRECTORY
    count = iter(range(1000))

    def plan(dp=None) -> Path:
        """A new plan of the same content (only its name differs), made as ``session plan`` makes it."""
        name = f"cache-{next(count)}"
        spec = SessionSpec.from_dict({"name": name, "task": "tffprod.examples.digits:task", "rounds": ROUNDS,
                                      "datasets": [f"{s}/train" for s in SITES], "seed": 0,
                                      **({"dp": dp} if dp else {})})
        document = make_plan(plan_session(spec, registry=registry), cache_dir=cache)
        return write_plan(document, root / "plans" / f"{name}.json")

    yield registry, root, cache, plan
    registry.close()


class EmptyCache:
    """The plan cache moved aside for the block, and put back after."""

    def __init__(self, cache: Path) -> None:
        self.cache, self.aside = cache, cache.with_name(cache.name + ".aside")

    def __enter__(self) -> None:
        shutil.move(self.cache, self.aside)

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
        shutil.move(self.aside, self.cache)


def _run(workspace, plan: Path, caplog, expect: str, **kwargs) -> dict:
    registry, root, _, _ = workspace
    caplog.clear()
    try:
        return train_from_plan(plan, registry=registry, backend=LocalBackend(log_dir=root / "logs"), **kwargs)
    finally:
        assert expect in caplog.text, caplog.text[-2000:]


def _stopped_after_round_1(workspace, plan: Path, caplog, expect: str) -> str:
    registry = workspace[0]

    def stop(report) -> None:
        raise Stop(f"stopped after round {report.round_num}")

    with pytest.raises(SessionError, match="stopped after round 1"):
        _run(workspace, plan, caplog, expect, progress=stop)
    (session,) = [s for s in registry.list_sessions() if s["spec"].get("plan_id") and s["status"] == "failed"
                  and s["rounds_completed"] == 1]
    return session["id"]


def _resume(workspace, session_id: str, plan: Path, caplog, expect: str) -> dict:
    registry, root, _, _ = workspace
    caplog.clear()
    result = resume_session(session_id, registry=registry, backend=LocalBackend(log_dir=root / "logs"),
                            plan_path=str(plan))
    assert expect in caplog.text, caplog.text[-2000:]
    assert result["status"] == "finished" and result["rounds_completed"] == ROUNDS
    return result


def _weights(result: dict) -> dict:
    with np.load(Path(result["model_version"]["artifact_path"]) / "weights.npz") as archive:
        return {key: archive[key] for key in archive.files}


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
        assert a[key].tobytes() == b[key].tobytes(), key


@pytest.fixture(scope="module")
def from_cache(workspace):
    """A session run from a cache hit, start to end (the reference weights)."""
    registry, root, cache, plan = workspace
    path = plan()
    assert plan_cache.load_coordinator(cache, _key(workspace, path))["computations"]  # session plan stored them
    result = train_from_plan(path, registry=registry, backend=LocalBackend(log_dir=root / "logs"))
    assert result["status"] == "finished" and result["rounds_completed"] == ROUNDS
    return result


def _key(workspace, path: Path) -> str:
    from tffprod.protocol.plan_document import load_plan

    registry = workspace[0]
    document = load_plan(path).document
    return plan_cache.cache_key(plan_session(SessionSpec.from_dict(document["spec"]), registry=registry))


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="tffprod")


def test_a_cache_hit_and_a_build_train_bitwise_equal_weights(workspace, from_cache, caplog) -> None:
    _, _, cache, plan = workspace
    path = plan()
    with EmptyCache(cache):
        built = _run(workspace, path, caplog, BUILT)
    assert "the plan cache holds none for this plan's content" in caplog.text
    _assert_bitwise_equal(_weights(from_cache), _weights(built))


def test_a_session_resumes_across_the_two_paths(workspace, from_cache, caplog) -> None:
    """Started from the cache and resumed by a coordinator that builds; and the other way round."""
    _, _, cache, plan = workspace
    path = plan()
    session_id = _stopped_after_round_1(workspace, path, caplog, HIT)
    with EmptyCache(cache):
        resumed = _resume(workspace, session_id, path, caplog, BUILT)
    _assert_bitwise_equal(_weights(from_cache), _weights(resumed))

    path = plan()
    with EmptyCache(cache):
        session_id = _stopped_after_round_1(workspace, path, caplog, BUILT)
    resumed = _resume(workspace, session_id, path, caplog, HIT)
    _assert_bitwise_equal(_weights(from_cache), _weights(resumed))


def test_a_dp_session_from_the_cache_accounts_each_rounds_dp_event(workspace, caplog) -> None:
    registry, _, cache, plan = workspace
    path = plan(dp=DP)
    result = _run(workspace, path, caplog, HIT)
    rounds = registry.list_rounds(result["id"])
    expected = [epsilon_for(noise_multiplier=DP["noise_multiplier"], rounds=n, delta=DP["delta"])
                for n in (1, 2)]
    assert [row["epsilon"] for row in rounds] == pytest.approx(expected, rel=1e-9)
    assert result["model_version"]["epsilon"] == pytest.approx(expected[-1], rel=1e-9)
