"""Site churn: quarantine, per-round deadlines, the spec's ``[reliability]`` table.

Pure Python: no TensorFlow (the router's per-round deadline is in e2e/test_churn_router.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tffprod.config.reliability import ReliabilityConfig
from tffprod.sessions.reliability import DeadlinePolicy, SiteHealth
from tffprod.errors import SpecError
from tffprod.sessions.spec import SessionSpec, dump_spec, load_spec

BASE = """\
name = "digits"
task = "tffprod.examples.digits:task"
datasets = ["hospital-a/train", "hospital-b/train", "hospital-c/train"]
rounds = 10
round_timeout_s = 600.0
"""


def ok(site: str, duration_s: float = 1.0) -> dict:
    return {"site": site, "status": "ok", "duration_s": duration_s, "clients": 1, "examples": 10, "error": None}


def failed(site: str, status: str = "error", error: str = "UNAVAILABLE: connection refused") -> dict:
    return {"site": site, "status": status, "duration_s": 5.0, "clients": 1, "examples": 0, "error": error}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ SiteHealth


def test_a_site_is_quarantined_after_n_failures_in_a_row():
    health = SiteHealth(3)
    health.observe(1, [ok("a"), failed("b")])
    health.observe(2, [ok("a"), failed("b", "timeout", "no result within 10 s")])
    assert health.quarantined == {}
    assert health.failures == {"a": 0, "b": 2}
    health.observe(3, [ok("a"), failed("b", error="INTERNAL: worker died")])
    assert health.quarantined == {"b": {"round": 3, "failures": 3, "reason": "INTERNAL: worker died"}}
    assert health.active(["c", "b", "a"]) == ["c", "a"]


def test_a_success_resets_the_count():
    health = SiteHealth(2)
    for round_num, outcome in enumerate([failed("a"), ok("a"), failed("a"), ok("a"), failed("a")], start=1):
        health.observe(round_num, [outcome])
    assert health.failures == {"a": 1}
    assert health.quarantined == {}
    health.observe(6, [failed("a")])
    assert list(health.quarantined) == ["a"]
    assert health.quarantined["a"]["round"] == 6


def test_a_site_not_called_neither_fails_nor_resets():
    health = SiteHealth(2)
    health.observe(1, [failed("a"), ok("b")])
    health.observe(2, [ok("b")])          # a not called (e.g. none of its clients sampled)
    health.observe(3, [])                 # nobody called
    assert health.failures == {"a": 1, "b": 0}
    health.observe(4, [failed("a"), ok("b")])
    assert health.quarantined["a"] == {"round": 4, "failures": 2, "reason": "UNAVAILABLE: connection refused"}


def test_quarantine_lasts_for_the_session_and_keeps_its_first_record():
    health = SiteHealth(1)
    health.observe(1, [failed("a", "timeout", "no result within 10 s")])
    health.observe(2, [ok("a")])          # still reported: the quarantine stands
    health.observe(3, [failed("a")])
    assert health.quarantined == {"a": {"round": 1, "failures": 1, "reason": "no result within 10 s"}}
    assert health.active(["a"]) == []


def test_reason_falls_back_to_the_status():
    health = SiteHealth(1)
    health.observe(7, [failed("a", "timeout", error=None)])
    assert health.quarantined["a"]["reason"] == "timeout"


def test_quarantine_after_zero_never_quarantines():
    health = SiteHealth(0)
    for round_num in range(1, 51):
        health.observe(round_num, [failed("a")])
    assert health.quarantined == {}
    assert health.failures == {"a": 50}
    assert health.active(["a", "b"]) == ["a", "b"]


def test_quarantined_is_a_copy():
    health = SiteHealth(1)
    health.observe(1, [failed("a")])
    health.quarantined["a"]["round"] = 99
    health.quarantined.clear()
    assert health.quarantined["a"]["round"] == 1


def test_rebuilding_from_recorded_rounds_gives_the_same_state():
    rounds = [
        (1, [ok("a"), failed("b"), failed("c")]),
        (2, [failed("a"), failed("b"), ok("c")]),
        (3, [failed("a"), failed("b", "timeout", "no result within 3 s")]),
        (4, [ok("a"), failed("c")]),
        (5, [failed("a"), ok("c")]),
    ]
    live = SiteHealth(3)
    for round_num, participants in rounds:
        live.observe(round_num, participants)
    assert list(live.quarantined) == ["b"]
    rebuilt = SiteHealth.replay(3, rounds)
    assert rebuilt == live
    assert (rebuilt.failures, rebuilt.quarantined) == (live.failures, live.quarantined)
    # a resume after round 3 that replays 1-3, then runs on, ends the same way
    resumed = SiteHealth.replay(3, rounds[:3])
    for round_num, participants in rounds[3:]:
        resumed.observe(round_num, participants)
    assert resumed == live
    assert SiteHealth.replay(3, rounds[:4]) != live


def test_site_health_refuses_bad_input():
    with pytest.raises(ValueError, match="quarantine_after must be an integer >= 0, got -1"):
        SiteHealth(-1)
    with pytest.raises(ValueError, match="site 'a': unknown status 'lost'"):
        SiteHealth(3).observe(1, [{"site": "a", "status": "lost", "duration_s": 1.0, "error": None}])


# ------------------------------------------------------------------ DeadlinePolicy


def adaptive(**keys) -> ReliabilityConfig:
    return ReliabilityConfig(deadline="adaptive", **keys)


def test_fixed_deadline_is_always_the_round_timeout():
    policy = DeadlinePolicy(ReliabilityConfig(), 600.0)
    assert policy.next_deadline() == 600.0
    policy.observe([ok("a", 1.0), ok("b", 2.0)])
    assert policy.next_deadline() == 600.0


def test_adaptive_deadline_is_a_multiple_of_the_slowest_recent_site():
    policy = DeadlinePolicy(adaptive(deadline_factor=3.0, deadline_window=2, deadline_min_s=1.0), 600.0)
    assert policy.next_deadline() == 600.0                          # no history yet: the maximum
    policy.observe([ok("a", 4.0), ok("b", 20.0), failed("c")])      # failed sites do not count
    assert policy.next_deadline() == 60.0
    policy.observe([ok("a", 5.0)])
    assert policy.next_deadline() == 60.0                           # 20 s is still in the window
    policy.observe([ok("a", 6.0), ok("b", 2.0)])
    assert policy.next_deadline() == 18.0                           # 20 s has left it
    policy.observe([])                                              # a round that called nobody
    assert policy.next_deadline() == 18.0


def test_adaptive_deadline_is_clamped_both_ways():
    config = adaptive(deadline_factor=2.0, deadline_min_s=10.0, deadline_max_s=100.0)
    policy = DeadlinePolicy(config, 600.0)
    assert policy.next_deadline() == 100.0
    policy.observe([ok("a", 1.0)])
    assert policy.next_deadline() == 10.0                           # 2 s, raised to the minimum
    policy.observe([ok("a", 80.0)])
    assert policy.next_deadline() == 100.0                          # 160 s, cut to the maximum
    # without deadline_max_s, the round timeout is the maximum
    policy = DeadlinePolicy(adaptive(deadline_factor=2.0), 120.0)
    assert policy.next_deadline() == 120.0
    policy.observe([ok("a", 80.0)])
    assert policy.next_deadline() == 120.0
    # a minimum above the maximum: the maximum wins (never wait longer than the spec allows)
    assert DeadlinePolicy(adaptive(deadline_min_s=50.0), 20.0).next_deadline() == 20.0


def test_rounds_where_every_site_failed_age_the_history_out():
    policy = DeadlinePolicy(adaptive(deadline_window=2, deadline_min_s=1.0), 600.0)
    policy.observe([ok("a", 2.0)])
    policy.observe([failed("a", "timeout")])
    assert policy.next_deadline() == 6.0
    policy.observe([failed("a", "timeout")])
    assert policy.next_deadline() == 600.0


def test_deadline_policy_rebuilds_from_history():
    rounds = [[ok("a", 3.0)], [ok("a", 7.0), failed("b")], [], [ok("b", 1.0)], [failed("a")], [failed("b")]]
    config = adaptive(deadline_window=3, deadline_min_s=1.0)
    live, seen = DeadlinePolicy(config, 600.0), []
    for participants in rounds:
        live.observe(participants)
        seen.append(live.next_deadline())
    rebuilt = DeadlinePolicy(config, 600.0)
    for participants in rounds:
        rebuilt.observe(participants)
    assert seen == [9.0, 21.0, 21.0, 21.0, 21.0, 3.0]         # the empty round does not take a place
    assert rebuilt.next_deadline() == live.next_deadline() == 3.0


# ------------------------------------------------------------------ ReliabilityConfig


def test_defaults_and_round_trip():
    config = ReliabilityConfig()
    assert (config.quarantine_after, config.deadline, config.deadline_factor, config.deadline_window,
            config.deadline_min_s, config.deadline_max_s) == (3, "fixed", 3.0, 5, 10.0, None)
    assert config.to_dict() == {"quarantine_after": 3, "deadline": "fixed"}  # adaptive keys only when adaptive
    assert ReliabilityConfig.from_dict({}) == config == ReliabilityConfig.from_dict(config.to_dict())
    full = adaptive(deadline_factor=2, deadline_max_s=60)
    assert full.deadline_factor == 2.0 and isinstance(full.deadline_factor, float)
    assert full.to_dict()["deadline_max_s"] == 60.0
    assert ReliabilityConfig.from_dict(full.to_dict()) == full


@pytest.mark.parametrize(("data", "message"), [
    ({"quarantine_after": -1}, "'reliability.quarantine_after' must be an integer >= 0, got -1"),
    ({"quarantine_after": "3"}, "'reliability.quarantine_after' must be an integer, got string '3'"),
    ({"quarantine_after": True}, "'reliability.quarantine_after' must be an integer, got boolean True"),
    ({"quarantine_after": 2.0}, "'reliability.quarantine_after' must be an integer, got float 2.0"),
    ({"deadline": "adaptiv"}, "'reliability.deadline' must be one of 'fixed', 'adaptive', got 'adaptiv' "
                              "(did you mean 'adaptive'?)"),
    ({"deadline": "adaptive", "deadline_factor": 0.5}, "'reliability.deadline_factor' must be a number >= 1, got 0.5"),
    ({"deadline": "adaptive", "deadline_factor": float("inf")},
     "'reliability.deadline_factor' must be a number >= 1, got inf"),
    ({"deadline": "adaptive", "deadline_window": 0}, "'reliability.deadline_window' must be an integer >= 1, got 0"),
    ({"deadline": "adaptive", "deadline_min_s": 0}, "'reliability.deadline_min_s' must be a number > 0, got 0"),
    ({"deadline": "adaptive", "deadline_max_s": 5.0},
     "'reliability.deadline_max_s' must be a number >= deadline_min_s (10), got 5.0"),
    ({"deadline": "adaptive", "deadline_max_s": "60"},
     "'reliability.deadline_max_s' must be a number, got string '60'"),
    ({"quarantine_afterr": 2}, "unknown key 'reliability.quarantine_afterr' (did you mean 'quarantine_after'?)"),
    ({"deadline_factor": 2.0}, "'reliability.deadline_factor' applies only to deadline = 'adaptive'"),
    ({"deadline": "fixed", "deadline_max_s": 60.0},
     "'reliability.deadline_max_s' applies only to deadline = 'adaptive'"),
])
def test_bad_values_give_one_line_naming_the_key(data, message):
    with pytest.raises(SpecError) as info:
        ReliabilityConfig.from_dict(data)
    assert str(info.value) == message


def test_not_a_table():
    with pytest.raises(SpecError, match=r"^'reliability' must be a table, got integer 3$"):
        ReliabilityConfig.from_dict(3)


# ------------------------------------------------------------------ the spec's [reliability] table


def test_spec_reads_the_reliability_table(tmp_path):
    spec = load_spec(write(tmp_path, BASE + """
[reliability]
quarantine_after = 2
deadline = "adaptive"
deadline_factor = 4
deadline_max_s = 120
"""))
    assert spec.reliability == ReliabilityConfig(quarantine_after=2, deadline="adaptive", deadline_factor=4.0,
                                                 deadline_max_s=120.0)
    assert spec.to_dict()["reliability"]["deadline_max_s"] == 120.0
    dump_spec(spec, tmp_path / "again.toml")
    assert "[reliability]" in (tmp_path / "again.toml").read_text()
    assert load_spec(tmp_path / "again.toml") == spec


def test_a_spec_without_the_table_or_with_defaults_is_written_as_before(tmp_path):
    plain = load_spec(write(tmp_path, BASE))
    assert plain.reliability == ReliabilityConfig()
    assert "reliability" not in plain.to_dict()
    defaults = load_spec(write(tmp_path, BASE + "\n[reliability]\nquarantine_after = 3\n"))
    assert defaults.to_dict() == plain.to_dict()
    assert "reliability" in load_spec(write(tmp_path, BASE + "\n[reliability]\nquarantine_after = 0\n")).to_dict()


@pytest.mark.parametrize(("table", "message"), [
    ("quarantine_after = -1", "'reliability.quarantine_after' must be an integer >= 0, got -1"),
    ("qurantine_after = 2", "unknown key 'reliability.qurantine_after' (did you mean 'quarantine_after'?)"),
    ('deadline = "adaptive"\ndeadline_max_s = 900',
     "'reliability.deadline_max_s' must be <= round_timeout_s (600), got 900"),
])
def test_spec_errors_name_the_file_and_the_key(tmp_path, table, message):
    path = write(tmp_path, BASE + "\n[reliability]\n" + table + "\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: {message}"
    assert "\n" not in str(info.value)


def test_adaptive_minimum_must_fit_the_round_timeout():
    data = {"name": "d", "task": "m:t", "datasets": ["a/train"], "rounds": 1, "round_timeout_s": 5.0}
    assert SessionSpec.from_dict(data).reliability.deadline_min_s == 10.0   # fixed: the minimum does not apply
    with pytest.raises(SpecError, match=r"deadline_min_s. must be <= round_timeout_s \(5\), got 10$"):
        SessionSpec.from_dict({**data, "reliability": {"deadline": "adaptive"}})
    spec = SessionSpec.from_dict({**data, "reliability": {"deadline": "adaptive", "deadline_min_s": 1}})
    assert DeadlinePolicy(spec.reliability, spec.round_timeout_s).next_deadline() == 5.0


def test_a_reliability_key_at_the_top_level_points_to_the_table(tmp_path):
    with pytest.raises(SpecError, match=r"unknown key 'quarantine_after' \(did you mean '\[reliability\] "
                                        r"quarantine_after'\?\)"):
        load_spec(write(tmp_path, BASE + "quarantine_after = 2\n"))


def test_churn_and_spec_stay_free_of_tensorflow():
    code = ("import sys, tffprod.sessions.reliability, tffprod.sessions.spec\n"
            "print(','.join(m for m in ('tensorflow', 'tensorflow_federated') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ}, timeout=60)
    assert out.stdout.strip() == ""


def test_a_spec_with_a_fixed_deadline_table_survives_its_own_round_trip():
    """What a session records (spec.to_dict()) must load again for show and resume."""
    spec = SessionSpec.from_dict({"name": "m", "task": "tffprod.examples.fraud:task", "rounds": 2,
                                  "datasets": ["bank-a/train"], "reliability": {"quarantine_after": 2}})
    recorded = spec.to_dict()
    assert recorded["reliability"] == {"quarantine_after": 2, "deadline": "fixed"}
    assert SessionSpec.from_dict(recorded).reliability == spec.reliability
    adaptive = SessionSpec.from_dict({**recorded, "reliability": {"deadline": "adaptive", "deadline_min_s": 2.0}})
    assert SessionSpec.from_dict(adaptive.to_dict()).reliability == adaptive.reliability
