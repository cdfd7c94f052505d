"""The demo's session: user-level DP whose calibrated epsilon stays within the issue's bound of 5."""

from __future__ import annotations

import pytest

from tffprod.dev import demo
from tffprod.privacy.accounting import epsilon_for

BANKS = ("bank-a", "bank-b", "bank-c")


@pytest.mark.parametrize("rounds", [3, 60])
def test_the_demo_noise_keeps_epsilon_within_five_for_any_rounds(rounds):
    spec = demo.demo_spec(rounds, BANKS, "remote")
    epsilon = epsilon_for(noise_multiplier=spec.dp.noise_multiplier, rounds=rounds, delta=spec.dp.delta,
                          sampling_rate=spec.sampling.client_rate)
    assert epsilon <= demo.TARGET_EPSILON < 5 and spec.dp.delta <= 1e-5
    # Calibrated, not padded: 2% less noise would overspend the target.
    assert epsilon_for(noise_multiplier=spec.dp.noise_multiplier * 0.98, rounds=rounds, delta=spec.dp.delta,
                       sampling_rate=spec.sampling.client_rate) > demo.TARGET_EPSILON


def test_the_demo_puts_the_noise_at_the_banks_behind_secure_aggregation():
    spec = demo.demo_spec(60, BANKS, "local")
    assert spec.dp.noise_placement == "distributed" and spec.dp.secure_aggregation
    assert spec.sampling.user_update == "one_step" and spec.min_sites == len(BANKS)
    assert spec.task == demo.TASK_PATH and spec.backend == "local"
