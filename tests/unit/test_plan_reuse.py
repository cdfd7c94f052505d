"""A plan trains one session: the coordinator refuses a used plan before anything runs (TF-free: a real
registry; the plan is only its id here, which is all the check reads)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from tffprod.errors import PlanError
from tffprod.registry import Registry
from tffprod.sessions.runner import refuse_used_plan

PLAN = types.SimpleNamespace(plan_id="ab" * 32)


@pytest.fixture
def registry(tmp_path: Path):
    with Registry.open(tmp_path / "tffprod.db") as registry:
        yield registry


def _session(registry: Registry, rounds_done: int, *, plan_id: str = PLAN.plan_id, status: str = "") -> str:
    row = registry.create_session(name="m", spec={"name": "m", "plan_id": plan_id}, task={}, backend="remote",
                                  rounds_planned=3, datasets=["hospital-a/train:1"])
    registry.start_session(row["id"])
    for n in range(1, rounds_done + 1):
        registry.record_round(row["id"], round_num=n, metrics={}, duration_s=0.1, epsilon=None,
                              participants=[{"site": "hospital-a", "status": "ok", "duration_s": 0.1,
                                             "examples": 1, "error": None}])
    if status:
        registry.finish_session(row["id"], status=status, error="x" if status == "failed" else None)
    return row["id"]


def test_a_new_plan_and_one_whose_session_failed_before_any_round_may_run(registry: Registry) -> None:
    refuse_used_plan(registry, PLAN)
    _session(registry, 0, status="failed")
    _session(registry, 3, plan_id="cd" * 32, status="finished")  # another plan's session
    refuse_used_plan(registry, PLAN)


def test_a_plan_whose_session_finished_is_refused_with_what_to_do(registry: Registry) -> None:
    session = _session(registry, 3, status="finished")
    with pytest.raises(PlanError, match=rf"plan {PLAN.plan_id[:16]} has been used: session {session} trained 3 of "
                                        r"its 3 round\(s\) \(finished\); make a new plan"):
        refuse_used_plan(registry, PLAN)


def test_a_plan_whose_session_stopped_midway_points_to_resume(registry: Registry) -> None:
    session = _session(registry, 1, status="failed")
    with pytest.raises(PlanError, match=rf"is in use: session {session} trained 1 of its 3 round\(s\) \(failed\); "
                                        rf"continue that session with 'tffprod session resume {session}'"):
        refuse_used_plan(registry, PLAN)
