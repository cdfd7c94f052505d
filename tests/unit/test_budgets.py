"""Privacy budgets at the coordinator (TF-free: real registry files, dp_accounting)."""

from __future__ import annotations

import pytest

from tffprod.privacy.accounting import epsilon_for
from tffprod.sessions.budgets import plan_budgets, rounds_that_fit
from tffprod.errors import PrivacyBudgetError
from tffprod.registry import Registry
from tffprod.sessions.spec import SessionSpec

Z, DELTA = 1.0, 1e-5
ROWS = [{"site": "bank-a", "name": "train"}, {"site": "bank-b", "name": "train"}]


def _spec(rounds=10, on_budget="refuse", dp=True):
    data = {"name": "m", "task": "tffprod.examples.fraud:task", "datasets": ["bank-a/train", "bank-b/train"],
            "rounds": rounds}
    if dp:
        data["dp"] = {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA,
                      "on_budget": on_budget}
    return SessionSpec.from_dict(data)


@pytest.fixture
def registry(tmp_path):
    with Registry.open(tmp_path / "r.db") as reg:
        for site in ("bank-a", "bank-b"):
            reg.add_dataset(site=site, name="train", path=f"/data/{site}.csv", format="csv",
                            schema={"features": [{"name": "x", "dtype": "float32", "shape": []}],
                                    "label": {"name": "y", "dtype": "int64", "shape": []}},
                            num_examples=10, content_hash="sha256:" + "1" * 64)
        yield reg


def test_rounds_that_fit_is_the_last_round_within_epsilon():
    three = epsilon_for(noise_multiplier=Z, rounds=3, delta=DELTA)
    four = epsilon_for(noise_multiplier=Z, rounds=4, delta=DELTA)
    assert rounds_that_fit(noise_multiplier=Z, delta=DELTA, epsilon=(three + four) / 2, rounds=10) == 3
    assert rounds_that_fit(noise_multiplier=Z, delta=DELTA, epsilon=three, rounds=10) == 3
    assert rounds_that_fit(noise_multiplier=Z, delta=DELTA, epsilon=1e9, rounds=10) == 10
    assert rounds_that_fit(noise_multiplier=Z, delta=DELTA, epsilon=0.0, rounds=10) == 0


def test_no_budget_no_limit(registry):
    plan = plan_budgets(_spec(), ROWS, registry=registry)
    assert not plan.limited and plan.max_rounds == 10


def test_a_session_over_budget_is_refused_naming_what_fits(registry):
    allow = (epsilon_for(noise_multiplier=Z, rounds=3, delta=DELTA) + epsilon_for(noise_multiplier=Z, rounds=4,
                                                                                  delta=DELTA)) / 2
    registry.set_budget("bank-b", "train", epsilon=allow, delta=1e-4, source="site")
    with pytest.raises(PrivacyBudgetError, match=r"bank-b/train's remaining budget .*; 3 round\(s\) fit"):
        plan_budgets(_spec(), ROWS, registry=registry)
    plan = plan_budgets(_spec(on_budget="stop"), ROWS, registry=registry)
    assert plan.max_rounds == 3 and set(plan.remaining) == {"bank-b/train"}


def test_spent_budget_counts_across_sessions(registry):
    one_round = epsilon_for(noise_multiplier=Z, rounds=1, delta=DELTA)
    registry.set_budget("bank-a", "train", epsilon=one_round * 1.5, delta=1e-4, source="coordinator")
    assert plan_budgets(_spec(rounds=1), ROWS, registry=registry).max_rounds == 1
    session = registry.create_session(name="m", spec={}, task={}, backend="local", rounds_planned=1,
                                      datasets=["bank-a/train:1"])
    registry.record_round(session["id"], round_num=1, metrics={}, participants=[], duration_s=0.1,
                          epsilon=one_round, spend=[{"site": "bank-a", "name": "train", "epsilon": one_round,
                                                     "delta": DELTA, "rounds": 1}])
    with pytest.raises(PrivacyBudgetError, match="0 round"):
        plan_budgets(_spec(rounds=1, on_budget="stop"), ROWS, registry=registry)


def test_budgeted_data_needs_dp_and_a_delta_that_fits(registry):
    registry.set_budget("bank-a", "train", epsilon=10.0, delta=1e-6, source="site")
    with pytest.raises(PrivacyBudgetError, match="must use DP"):
        plan_budgets(_spec(dp=False), ROWS, registry=registry)
    with pytest.raises(PrivacyBudgetError, match="delta 1e-05 exceeds the remaining"):
        plan_budgets(_spec(), ROWS, registry=registry)
