"""Every registered DP mechanism passes the same cases: its [dp] table, its checks, its plan terms.

A new mechanism is one module in ``tffprod/privacy/mechanisms/`` and one line in the registry; these
cases then run for it too (TF-free; its TFF aggregator is checked in tests/integration).
"""

from __future__ import annotations

import pytest

from tffprod.errors import SpecError
from tffprod.privacy.config import DP_KEYS, DPConfig
from tffprod.privacy.mechanisms import MECHANISMS, Mechanism, get_mechanism

NAMES = sorted(MECHANISMS)
VALUES = {"noise_multiplier": 0.5, "clip": 1.5, "delta": 1e-5, "on_budget": "stop", "target_quantile": 0.4,
          "learning_rate": 0.1, "noise_placement": "distributed", "secure_aggregation": True,
          "eval_noise_multiplier": 2.0, "eval_bound": 16.2}


def table(name: str, **overrides: object) -> dict:
    mechanism = MECHANISMS[name]
    return {"mechanism": name, **{key: VALUES[key] for key in mechanism.keys}, **overrides}


def test_the_registry_holds_the_documented_mechanisms() -> None:
    assert NAMES == ["gaussian_adaptive", "gaussian_fixed", "none"]
    assert all(isinstance(m, Mechanism) and m.name == name for name, m in MECHANISMS.items())


@pytest.mark.parametrize("name", NAMES)
def test_a_full_table_round_trips_through_dp_config(name: str) -> None:
    config = DPConfig.from_dict(table(name))
    assert config.to_dict() == table(name)
    assert config.enabled == MECHANISMS[name].private


@pytest.mark.parametrize("name", NAMES)
def test_each_required_key_is_required(name: str) -> None:
    for key in MECHANISMS[name].required:
        data = table(name)
        del data[key]
        with pytest.raises(SpecError, match=f"missing required key 'dp.{key}' for mechanism '{name}'"):
            DPConfig.from_dict(data)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_fill_in_and_other_mechanisms_keys_are_refused(name: str) -> None:
    mechanism = MECHANISMS[name]
    data = {k: v for k, v in table(name).items() if k not in mechanism.defaults}
    config = DPConfig.from_dict(data)
    assert {key: getattr(config, key) for key in mechanism.defaults} == dict(mechanism.defaults)
    for key in set(DP_KEYS) - {"mechanism", *mechanism.keys}:
        with pytest.raises(SpecError, match=f"key 'dp.{key}' does not apply to mechanism '{name}'"):
            DPConfig.from_dict({**table(name), key: VALUES[key]})


@pytest.mark.parametrize("name", NAMES)
def test_the_release_bound_is_the_clip_or_nothing(name: str) -> None:
    config = DPConfig.from_dict(table(name))
    bound = MECHANISMS[name].release_bound(config)
    assert bound is None or bound == config.clip
    if MECHANISMS[name].moving_state:  # a clip the coordinator moves cannot be a site's bound
        assert bound is None


@pytest.mark.parametrize("name", NAMES)
def test_the_clients_check_accepts_large_rounds(name: str) -> None:
    assert MECHANISMS[name].check_clients(DPConfig.from_dict(table(name)), 10_000, "clients per round") is None


def test_adaptive_clipping_refuses_noise_too_large_for_the_round() -> None:
    config = DPConfig.from_dict(table("gaussian_adaptive", noise_multiplier=1.0))
    with pytest.raises(SpecError, match=r"too large for gaussian_adaptive with 5 expected clients per round"):
        get_mechanism("gaussian_adaptive").check_clients(config, 5, "expected clients per round")


def test_an_unknown_mechanism_is_one_line_naming_the_known_ones() -> None:
    with pytest.raises(SpecError, match=r"^'dp.mechanism' must be one of 'none', 'gaussian_fixed', "
                                        r"'gaussian_adaptive', got 'laplace'$"):
        get_mechanism("laplace")
