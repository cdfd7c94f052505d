"""Evaluation plans with noise at the sites: their terms, and what they charge each dataset (TF-free)."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting import rdp

from tffprod.errors import SpecError
from tffprod.privacy.terms import evaluation_charges, evaluation_line
from tffprod.sessions.approval import _evaluation_terms

ROWS = [{"site": "hospital-a", "name": "test", "ref": "hospital-a/test:1"},
        {"site": "hospital-b", "name": "test", "ref": "hospital-b/test:2"}]


def test_a_noised_evaluation_plan_states_its_epsilon_and_charges_each_dataset_once():
    terms = _evaluation_terms(2.0, None, 1e-6)
    independent = rdp.RdpAccountant().compose(dp_accounting.GaussianDpEvent(2.0)).get_epsilon(1e-6)
    assert terms["mechanism"] == "none" and terms["delta"] == 1e-6
    assert terms["evaluation"] == {"noise_multiplier": 2.0, "bound": 16.2, "epsilon": pytest.approx(independent,
                                                                                                   rel=1e-6)}
    charges = evaluation_charges(terms, ROWS)
    assert charges == [{"site": row["site"], "name": "test", "epsilon": pytest.approx(independent, rel=1e-6),
                        "delta": 1e-6, "releases": 1, "noise_multiplier": 2.0} for row in ROWS]
    assert "at most 16.2 per example in each sum" in evaluation_line(terms)


def test_an_un_noised_evaluation_plan_charges_nothing_and_takes_no_noise_terms():
    assert _evaluation_terms(None, None, None) is None
    assert evaluation_charges({"mechanism": "none", "unit": "none"}, ROWS) == []
    with pytest.raises(SpecError, match="only with an evaluation noise multiplier"):
        _evaluation_terms(None, 16.2, None)


@pytest.mark.parametrize("noise, bound, delta, problem", [
    (0.0, None, None, "evaluation noise multiplier"), (float("inf"), None, None, "evaluation noise multiplier"),
    (1.0, -1.0, None, "evaluation bound"), (1.0, None, 1.0, "delta"),
])
def test_noise_terms_out_of_range_are_refused(noise, bound, delta, problem):
    with pytest.raises(SpecError, match=problem):
        _evaluation_terms(noise, bound, delta)
