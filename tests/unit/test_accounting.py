"""Privacy accounting against dp_accounting, with anchors measured beforehand."""

from __future__ import annotations

import math

import pytest

from tffprod.privacy.accounting import PrivacyLedger, epsilon_for


# z=1.1, 100 rounds, delta=1e-5 (measured with dp_accounting 0.4.3).
def test_anchor_full_participation_rdp():
    assert epsilon_for(noise_multiplier=1.1, rounds=100, delta=1e-5) == pytest.approx(83.1, abs=0.1)


def test_anchor_sampled_rdp():
    eps = epsilon_for(noise_multiplier=1.1, rounds=100, delta=1e-5, sampling_rate=0.01)
    assert eps == pytest.approx(0.956, abs=0.005)


def test_anchor_sampled_pld():
    eps = epsilon_for(noise_multiplier=1.1, rounds=100, delta=1e-5, sampling_rate=0.01, accountant="pld")
    assert eps == pytest.approx(0.55, abs=0.01)


def test_more_rounds_cost_more():
    eps = [epsilon_for(noise_multiplier=1.1, rounds=r, delta=1e-5) for r in (1, 10, 100)]
    assert eps[0] < eps[1] < eps[2]


def test_more_noise_costs_less():
    eps = [epsilon_for(noise_multiplier=z, rounds=10, delta=1e-5) for z in (0.5, 1.0, 2.0)]
    assert eps[0] > eps[1] > eps[2]


def test_smaller_delta_costs_more():
    loose = epsilon_for(noise_multiplier=1.0, rounds=10, delta=1e-3)
    assert epsilon_for(noise_multiplier=1.0, rounds=10, delta=1e-7) > loose


def test_zero_rounds_and_zero_noise():
    assert epsilon_for(noise_multiplier=1.0, rounds=0, delta=1e-5) == 0.0
    assert epsilon_for(noise_multiplier=0.0, rounds=0, delta=1e-5) == 0.0
    assert epsilon_for(noise_multiplier=0.0, rounds=1, delta=1e-5) == math.inf


def test_ledger_starts_empty():
    ledger = PrivacyLedger(noise_multiplier=1.1, delta=1e-5)
    assert ledger.rounds == 0
    assert ledger.epsilon() == 0.0
    assert ledger.to_dict() == {
        "noise_multiplier": 1.1,
        "delta": 1e-5,
        "accountant": "rdp",
        "rounds": 0,
        "epsilon": 0.0,
        "sampling_rates": [],
        "events": [],
    }


def test_ledger_per_round_equals_planning_helper():
    ledger = PrivacyLedger(noise_multiplier=1.1, delta=1e-5)
    previous = 0.0
    for r in range(1, 21):
        eps = ledger.record_round()
        assert eps > previous
        previous = eps
        if r in (1, 5, 20):
            assert eps == pytest.approx(epsilon_for(noise_multiplier=1.1, rounds=r, delta=1e-5), rel=1e-9)
    assert ledger.rounds == 20
    assert ledger.epsilon() == previous


def test_ledger_sampled_rounds_equal_planning_helper():
    ledger = PrivacyLedger(noise_multiplier=1.1, delta=1e-5)
    for _ in range(5):
        eps = ledger.record_round(sampling_rate=0.01)
    assert eps == pytest.approx(
        epsilon_for(noise_multiplier=1.1, rounds=5, delta=1e-5, sampling_rate=0.01), rel=1e-9
    )


def test_ledger_pld():
    ledger = PrivacyLedger(noise_multiplier=1.1, delta=1e-5, accountant="pld")
    ledger.record_round()
    eps = ledger.record_round()
    planned = epsilon_for(noise_multiplier=1.1, rounds=2, delta=1e-5, accountant="pld")
    assert eps == pytest.approx(planned, rel=1e-6)
    assert ledger.to_dict()["accountant"] == "pld"


def test_ledger_mixed_rates_lie_between_the_pure_ones():
    ledger = PrivacyLedger(noise_multiplier=1.1, delta=1e-5)
    for q in (1.0, 0.1, 1.0, 0.1):
        ledger.record_round(sampling_rate=q)
    low = epsilon_for(noise_multiplier=1.1, rounds=4, delta=1e-5, sampling_rate=0.1)
    high = epsilon_for(noise_multiplier=1.1, rounds=4, delta=1e-5)
    assert low < ledger.epsilon() < high
    assert ledger.to_dict()["sampling_rates"] == [1.0, 0.1, 1.0, 0.1]


def test_ledger_zero_noise_is_infinite():
    ledger = PrivacyLedger(noise_multiplier=0.0, delta=1e-5)
    assert ledger.epsilon() == 0.0
    assert ledger.record_round() == math.inf


def test_ledger_to_dict_from_dict():
    ledger = PrivacyLedger(noise_multiplier=1.1, delta=1e-5)
    ledger.record_round()
    ledger.record_round(sampling_rate=0.5)
    data = ledger.to_dict()
    assert data["rounds"] == 2 and data["epsilon"] == ledger.epsilon()
    again = PrivacyLedger.from_dict(data)
    assert again.to_dict() == data
    assert again.sampling_rates == (1.0, 0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": -0.1, "delta": 1e-5},
        {"noise_multiplier": math.inf, "delta": 1e-5},
        {"noise_multiplier": True, "delta": 1e-5},
        {"noise_multiplier": "1.0", "delta": 1e-5},
        {"noise_multiplier": 1.0, "delta": 0.0},
        {"noise_multiplier": 1.0, "delta": 1.0},
        {"noise_multiplier": 1.0, "delta": -1e-5},
        {"noise_multiplier": 1.0, "delta": 1e-5, "accountant": "moments"},
    ],
)
def test_ledger_constructor_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        PrivacyLedger(**kwargs)


@pytest.mark.parametrize("q", [0.0, -0.5, 1.5, math.nan, True])
def test_bad_sampling_rate(q):
    ledger = PrivacyLedger(noise_multiplier=1.0, delta=1e-5)
    with pytest.raises(ValueError, match="sampling_rate"):
        ledger.record_round(sampling_rate=q)
    assert ledger.rounds == 0
    with pytest.raises(ValueError, match="sampling_rate"):
        epsilon_for(noise_multiplier=1.0, rounds=1, delta=1e-5, sampling_rate=q)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rounds": -1},
        {"rounds": 1.5},
        {"noise_multiplier": -1.0},
        {"delta": 2.0},
        {"accountant": "gdp"},
    ],
)
def test_epsilon_for_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        epsilon_for(**{"noise_multiplier": 1.0, "rounds": 1, "delta": 1e-5, **kwargs})


def test_ledger_composes_the_events_tff_reports():
    import dp_accounting

    # What TFF's adaptive-clipping aggregator reports for noise_multiplier 0.2: the value
    # and the clipped-count noise as two Gaussians, together worth one Gaussian of 0.2.
    reported = dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(0.26832816), dp_accounting.GaussianDpEvent(0.3)]
    )
    ledger = PrivacyLedger(noise_multiplier=0.2, delta=1e-5)
    for _ in range(3):
        eps = ledger.record_round(event=reported)
    assert eps == pytest.approx(epsilon_for(noise_multiplier=0.2, rounds=3, delta=1e-5), rel=1e-3)
    louder = PrivacyLedger(noise_multiplier=0.2, delta=1e-5)
    louder.record_round(event=dp_accounting.GaussianDpEvent(2.0))
    assert louder.epsilon() < epsilon_for(noise_multiplier=0.2, rounds=1, delta=1e-5)
    assert ledger.to_dict()["events"][0].startswith("ComposedDpEvent")


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_a_ledger_round_by_round_equals_dp_accounting_from_scratch(accountant):
    """Each distinct round is accounted once per process and composed from that: every epsilon along the
    way equals dp_accounting composing the whole history afresh, event by event (1e-9 relative)."""
    import dp_accounting
    from dp_accounting import pld, rdp

    ledger = PrivacyLedger(noise_multiplier=1.3, delta=1e-5, accountant=accountant)
    rates = [0.1, 0.1, 0.25, 0.1, 1.0, 0.25, 0.1]
    for i, q in enumerate(rates, start=1):
        got = ledger.record_round(sampling_rate=q)
        fresh = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
        for rate in rates[:i]:
            gaussian = dp_accounting.GaussianDpEvent(1.3)
            fresh.compose(gaussian if rate == 1.0 else dp_accounting.PoissonSampledDpEvent(rate, gaussian))
        assert got == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-9 if accountant == "rdp" else 1e-6)


def test_fixed_size_rounds_are_accounted_once_too():
    import dp_accounting
    from dp_accounting import rdp

    ledger = PrivacyLedger(noise_multiplier=1.1, delta=1e-5)
    for _ in range(3):
        got = ledger.record_round(fixed_sample=(1000, 50))
    fresh = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    fresh.compose(dp_accounting.SampledWithoutReplacementDpEvent(1000, 50, dp_accounting.GaussianDpEvent(1.1)), 3)
    assert got == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-12)
