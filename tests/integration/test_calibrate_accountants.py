"""Calibration with fixed-size samples and with the PLD accountant (seconds per case, so not a unit test):
the noise found meets the target, a little less would not, and epsilon equals dp_accounting's own."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_calibrate import DELTA, independent_epsilon
from tffprod.privacy.accounting import epsilon_for
from tffprod.privacy.calibrate import RELATIVE_TOLERANCE, noise_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("kwargs", "independent"), [
    ({"fixed_sample": (5000, 50)}, {"fixed": (5000, 50)}),
    ({"sampling_rate": 0.02, "accountant": "pld"}, {"q": 0.02, "accountant": "pld"}),
])
def test_the_noise_is_tight_and_its_epsilon_is_dp_accountings(kwargs, independent) -> None:
    result = noise_for(3.0, delta=DELTA, rounds=50, **kwargs)
    assert result.epsilon <= 3.0
    assert result.epsilon == pytest.approx(independent_epsilon(result.noise_multiplier, 50, **independent), rel=1e-6)
    smaller = result.noise_multiplier * (1 - 2 * RELATIVE_TOLERANCE)
    assert epsilon_for(noise_multiplier=smaller, rounds=50, delta=DELTA, **kwargs) > 3.0


def test_the_cli_takes_a_fixed_sample(run_cli) -> None:
    data = json.loads(run_cli("privacy", "calibrate", "--epsilon", 5, "--delta", DELTA, "--rounds", 100,
                              "--clients-per-round", 50, "--clients", 5000, "--json").stdout)
    assert data["fixed_sample"] == [5000, 50] and data["sampling_rate"] is None
    assert data["epsilon"] == pytest.approx(independent_epsilon(data["noise_multiplier"], 100, fixed=(5000, 50)),
                                            rel=1e-6)
    assert data["epsilon"] <= 5
