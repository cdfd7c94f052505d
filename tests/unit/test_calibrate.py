"""``tffprod privacy calibrate``: the noise (or sampling rate) that meets a target epsilon, on the safe side."""

from __future__ import annotations

import json

import dp_accounting
import pytest

from tffprod.errors import SpecError
from tffprod.privacy.accounting import epsilon_for
from tffprod.privacy.calibrate import RELATIVE_TOLERANCE, noise_for, sampling_rate_for

DELTA = 1e-5


def independent_epsilon(noise: float, rounds: int, *, q: float = 1.0, fixed=None, accountant="rdp") -> float:
    """dp_accounting's own answer, built here without tffprod's accounting module."""
    gaussian = dp_accounting.GaussianDpEvent(noise)
    if fixed is not None:
        event = dp_accounting.SampledWithoutReplacementDpEvent(fixed[0], fixed[1], gaussian)
    elif q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, gaussian)
    else:
        event = gaussian
    if accountant == "pld":
        acc = dp_accounting.pld.PLDAccountant()
    else:
        acc = dp_accounting.rdp.RdpAccountant(  # dp_accounting's default orders
            neighboring_relation=(dp_accounting.NeighboringRelation.REPLACE_ONE if fixed is not None
                                  else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return acc.get_epsilon(DELTA)


@pytest.mark.parametrize(("target", "rounds", "kwargs"), [
    (5.0, 100, {"sampling_rate": 0.01}),
    (1.0, 1000, {"sampling_rate": 0.001}),
    (50.0, 20, {}),  # every client every round
])  # fixed samples and the PLD accountant take seconds per case: tests/integration/test_calibrate_accountants.py
def test_the_noise_found_meets_the_target_and_a_little_less_would_not(target, rounds, kwargs) -> None:
    result = noise_for(target, delta=DELTA, rounds=rounds, **kwargs)
    z = result.noise_multiplier
    accounted = {k: v for k, v in kwargs.items() if k != "accountant"}
    accountant = kwargs.get("accountant", "rdp")
    assert result.epsilon <= target
    assert result.epsilon == epsilon_for(noise_multiplier=z, rounds=rounds, delta=DELTA, accountant=accountant,
                                         **accounted)
    smaller = z * (1 - 2 * RELATIVE_TOLERANCE)
    assert epsilon_for(noise_multiplier=smaller, rounds=rounds, delta=DELTA, accountant=accountant,
                       **accounted) > target


@pytest.mark.parametrize(("kwargs", "independent"), [
    ({"sampling_rate": 0.01}, {"q": 0.01}),
    ({}, {}),
])
def test_the_epsilon_reported_equals_dp_accounting_computed_independently(kwargs, independent) -> None:
    result = noise_for(3.0, delta=DELTA, rounds=50, **kwargs)
    expected = independent_epsilon(result.noise_multiplier, 50, **independent)
    assert result.epsilon == pytest.approx(expected, rel=1e-6)


def test_the_sampling_rate_found_meets_the_target_and_a_little_more_would_not() -> None:
    result = sampling_rate_for(5.0, delta=DELTA, rounds=100, noise_multiplier=1.1)
    q = result.sampling_rate
    assert 0 < q < 1 and result.epsilon <= 5.0
    assert result.epsilon == pytest.approx(independent_epsilon(1.1, 100, q=q), rel=1e-6)
    larger = q * (1 + 2 * RELATIVE_TOLERANCE)
    assert epsilon_for(noise_multiplier=1.1, rounds=100, delta=DELTA, sampling_rate=larger) > 5.0


def test_a_target_every_client_meets_gives_a_sampling_rate_of_one() -> None:
    result = sampling_rate_for(1000.0, delta=DELTA, rounds=10, noise_multiplier=2.0)
    assert result.sampling_rate == 1.0 and result.epsilon <= 1000.0


@pytest.mark.parametrize(("call", "message"), [
    (lambda: noise_for(0, delta=DELTA, rounds=10), "target epsilon must be a finite number > 0, got 0"),
    (lambda: noise_for(1.0, delta=DELTA, rounds=0), "rounds must be an integer >= 1, got 0"),
    (lambda: noise_for(1.0, delta=2.0, rounds=10), "delta must be a number with 0 < delta < 1, got 2.0"),
    (lambda: noise_for(1.0, delta=DELTA, rounds=10, sampling_rate=1.5), "sampling_rate must be a number with 0 < q"),
    (lambda: noise_for(1e-9, delta=DELTA, rounds=100_000), "no noise multiplier up to 10000 gives epsilon"),
    (lambda: sampling_rate_for(0.001, delta=DELTA, rounds=100_000, noise_multiplier=0.3),
     "noise multiplier 0.3 cannot give epsilon <= 0.001"),
])
def test_impossible_or_bad_input_is_one_spec_error_line(call, message) -> None:
    with pytest.raises(SpecError) as caught:
        call()
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_the_cli_prints_one_line_and_json(run_cli) -> None:
    result = run_cli("privacy", "calibrate", "--epsilon", 5, "--delta", DELTA, "--rounds", 100,
                     "--sampling-rate", 0.01)
    assert result.exit_code == 0, result.output
    z = noise_for(5.0, delta=DELTA, rounds=100, sampling_rate=0.01).noise_multiplier
    assert result.stdout.startswith(f"noise_multiplier {z:.6g}, sampling rate 0.01: epsilon ")
    assert result.stdout.rstrip().endswith("(target 5) at delta 1e-05 over 100 rounds (rdp)")
    data = json.loads(run_cli("privacy", "calibrate", "--epsilon", 5, "--delta", DELTA, "--rounds", 100,
                              "--sampling-rate", 0.01, "--json").stdout)
    assert data["noise_multiplier"] == z and data["epsilon"] <= 5 and data["fixed_sample"] is None


@pytest.mark.parametrize("extra", [
    ["--clients-per-round", "50"],
    ["--sampling-rate", "0.1", "--clients-per-round", "5", "--clients", "50"],
    ["--noise-multiplier", "1.0", "--sampling-rate", "0.1"],
])
def test_conflicting_options_are_a_usage_error(run_cli, extra) -> None:
    result = run_cli("privacy", "calibrate", "--epsilon", 5, "--delta", DELTA, "--rounds", 100, *extra)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) >= 1


def test_an_impossible_target_exits_with_the_spec_error_code(run_cli) -> None:
    result = run_cli("privacy", "calibrate", "--epsilon", 1e-9, "--delta", DELTA, "--rounds", 100000)
    assert result.exit_code == SpecError.exit_code
    assert result.stderr.startswith("Error: no noise multiplier up to 10000")
