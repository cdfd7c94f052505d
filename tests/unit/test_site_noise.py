"""Noise at the sites: the placement rules, the site's noise source, and what a site approves (TF-free)."""

from __future__ import annotations

import math
import os
import stat

import numpy as np
import pytest
from scipy import stats

from tffprod.errors import PlanError
from tffprod.executors.approvals import approve
from tffprod.executors.site_secret import SECRET_FILE, load_or_create
from tffprod.privacy.noise import derive_key, standard_normal
from tffprod.privacy.placement import model_noise_multiplier, release_noise_multiplier, site_stddev
from tffprod.privacy.terms import evaluation_epsilon, placement_line, plan_epsilon, release_epsilon
from tffprod.protocol.plan_document import load_plan
from tests.helpers.plans import DELTA, SITE, catalog, plan_document, write


def privacy(placement: str = "distributed", sites: int = 4, z: float = 2.0) -> dict:
    terms = {"mechanism": "gaussian_fixed", "noise_multiplier": z, "clip": 0.5, "delta": DELTA,
             "sampling_rate": 0.01, "accountant": "rdp", "unit": "user (user-level)", "planned_epsilon": 1.0}
    if placement != "coordinator":
        terms.update(noise_placement=placement, noise_sites=sites)
    return terms


@pytest.mark.parametrize("placement, model, release", [
    ("coordinator", 2.0, None), ("distributed", 2.0, 1.0), ("local", 4.0, 2.0)])
def test_each_placement_states_the_noise_of_the_model_and_of_a_release(placement, model, release):
    terms = privacy(placement, sites=4, z=2.0)
    assert model_noise_multiplier(terms) == pytest.approx(model)
    assert release_noise_multiplier(terms) == (None if release is None else pytest.approx(release))
    assert site_stddev(terms, clip=0.5) == (None if release is None else pytest.approx(release * 0.5))


def test_distributed_shares_add_up_to_the_planned_noise():
    terms = privacy("distributed", sites=3, z=1.3)
    assert 3 * site_stddev(terms, clip=0.5) ** 2 == pytest.approx((1.3 * 0.5) ** 2)


def test_a_release_is_private_against_the_coordinator_only_with_noise_at_the_site():
    assert release_epsilon(privacy("coordinator"), 10) == (math.inf, 0.0)
    distributed, _ = release_epsilon(privacy("distributed", sites=4, z=2.0), 10)
    local, _ = release_epsilon(privacy("local", sites=4, z=2.0), 10)
    assert math.isfinite(distributed) and local < distributed  # local adds the full noise at each site
    # No amplification by sampling against the coordinator: same as the unsampled model epsilon at z.
    unsampled = dict(privacy("coordinator", z=2.0), sampling_rate=1.0)
    assert local == pytest.approx(plan_epsilon(unsampled, 10)[0], rel=1e-9)
    assert f"give epsilon {local:.4g}" in placement_line(privacy("local", sites=4, z=2.0), 10)
    assert "un-noised" in placement_line(privacy("coordinator"), 10)


def test_the_model_epsilon_of_local_noise_counts_every_sites_noise():
    local = plan_epsilon(privacy("local", sites=4, z=2.0), 10)[0]
    central = plan_epsilon(privacy("coordinator", z=4.0), 10)[0]  # 4 sites x z=2: the sum's multiplier is 4
    assert local == pytest.approx(central, rel=1e-12)


def test_the_noise_stream_is_standard_normal():
    draws = standard_normal(derive_key(b"k" * 32, b"release-1"), 200_001)
    assert draws.shape == (200_001,) and np.isfinite(draws).all()
    # Fixed key: deterministic, so these bounds are checked once, not sampled anew on each run.
    assert abs(draws.mean()) < 0.01 and abs(draws.std() - 1) < 0.01
    assert stats.kstest(draws, "norm").pvalue > 0.01
    assert stats.kstest(draws[1::2], "norm").pvalue > 0.01  # the cos and sin halves alike


def test_the_noise_is_reproducible_only_with_the_secret_and_the_same_release():
    key = derive_key(b"s" * 32, b"digest-a")
    assert np.array_equal(standard_normal(key, 1000), standard_normal(key, 1000))
    other_release = standard_normal(derive_key(b"s" * 32, b"digest-b"), 1000)
    other_secret = standard_normal(derive_key(b"t" * 32, b"digest-a"), 1000)
    for other in (other_release, other_secret):
        assert abs(np.corrcoef(standard_normal(key, 1000), other)[0, 1]) < 0.2


def test_the_site_secret_is_made_once_and_private(tmp_path):
    secret = load_or_create(tmp_path)
    assert len(secret) == 32 and load_or_create(tmp_path) == secret
    assert stat.S_IMODE(os.stat(tmp_path / SECRET_FILE).st_mode) == 0o600
    (tmp_path / SECRET_FILE).write_bytes(b"short")
    with pytest.raises(OSError, match="not a 32-byte site secret"):
        load_or_create(tmp_path)


def test_a_site_approves_noise_at_the_sites_split_over_no_more_sites_than_train(tmp_path):
    ok = load_plan(write(tmp_path, plan_document(privacy=privacy("distributed", sites=1)), "ok.json"))
    assert approve(ok, site=SITE, catalog=catalog(), state_dir=tmp_path / "a").privacy["noise_placement"] \
        == "distributed"
    too_many = load_plan(write(tmp_path, plan_document(privacy=privacy("distributed", sites=2)), "many.json"))
    with pytest.raises(PlanError, match="split over 2 site"):
        approve(too_many, site=SITE, catalog=catalog(), state_dir=tmp_path / "b")


def test_a_site_refuses_an_unknown_placement_or_noise_without_the_plans_clip(tmp_path):
    unknown = load_plan(write(tmp_path, plan_document(privacy=dict(privacy("local", sites=1),
                                                                   noise_placement="sites")), "u.json"))
    with pytest.raises(PlanError, match="unknown noise placement 'sites'"):
        approve(unknown, site=SITE, catalog=catalog(), state_dir=tmp_path / "u")
    # The plan loader already refuses a gaussian_fixed plan not bounded by its clip; an adaptive one
    # has no fixed bound, so noise at the sites cannot be calibrated to it.
    adaptive = dict(privacy("local", sites=1), mechanism="gaussian_adaptive")
    unbound = load_plan(write(tmp_path, plan_document(privacy=adaptive), "b.json"))
    with pytest.raises(PlanError, match="not bounded by the plan's clip"):
        approve(unbound, site=SITE, catalog=catalog(), state_dir=tmp_path / "c")


@pytest.mark.parametrize("placement, model_z, release_z", [
    ("coordinator", 1.5, None), ("distributed", 1.5, 1.5 / 3**0.5), ("local", 1.5 * 3**0.5, 1.5)])
def test_every_placements_epsilons_equal_an_independent_dp_accounting_computation(placement, model_z, release_z):
    import dp_accounting
    from dp_accounting import rdp

    terms = dict(privacy(placement, sites=3, z=1.5), sampling_rate=0.02)
    rounds = 40
    model = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(model_z)), rounds)
    assert plan_epsilon(terms, rounds)[0] == pytest.approx(rdp.RdpAccountant().compose(model).get_epsilon(DELTA),
                                                           rel=1e-6)
    if release_z is None:
        assert release_epsilon(terms, rounds)[0] == math.inf
        return
    release = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(release_z), rounds)
    assert release_epsilon(terms, rounds)[0] == pytest.approx(
        rdp.RdpAccountant().compose(release).get_epsilon(DELTA), rel=1e-6)


def _eval_plan(tmp_path, evaluation: dict | None, name: str):
    from tffprod.executors.datarefs import CatalogEntry
    from tffprod.protocol.plan_document import canonical_id

    terms = privacy("coordinator")
    if evaluation is not None:
        terms["evaluation"] = evaluation
    document = plan_document(privacy=terms)
    document["datasets"].append({"role": "eval", "ref": f"{SITE}/test:1", "site": SITE, "name": "test",
                                 "content_hash": "sha256:abc", "num_examples": 10})
    body = {k: v for k, v in document.items() if k != "plan_id"}
    plan = load_plan(write(tmp_path, {**body, "plan_id": canonical_id(body)}, f"{name}.json"))
    entries = {**catalog(), "test": CatalogEntry("test", "/data/test.csv", "csv", {}, 10, "sha256:abc", None)}
    return approve(plan, site=SITE, catalog=entries, state_dir=tmp_path / name)


def test_an_evaluation_release_is_charged_to_its_dataset_only_when_noised_and_refused_un_noised_on_a_budget(tmp_path):
    from tffprod.executors.ledger import SiteLedger
    from tffprod.privacy.accounting import epsilon_for

    z_eval = 4.0
    one = epsilon_for(noise_multiplier=z_eval, rounds=1, delta=DELTA)
    noised = _eval_plan(tmp_path, {"noise_multiplier": z_eval, "bound": 16.2, "epsilon": one}, "noised")
    plain = _eval_plan(tmp_path, None, "plain")
    budget = {"epsilon": 1.5 * one, "delta": 1.0}
    ledger = SiteLedger(tmp_path / "ledger.sqlite", site=SITE, budgets={"test": budget})
    assert "releases its evaluation metrics un-noised" in ledger.eval_budget_refusal(plain, "test", [plain, noised])
    assert ledger.eval_budget_refusal(noised, "test", [plain, noised]) is None
    assert ledger.spent("test", [noised]) == (0.0, 0.0)  # nothing released yet
    ledger.record_eval(noised, "test", "coordinator", "digest-1")
    assert ledger.spent("test", [noised]) == (pytest.approx(one), DELTA)
    twin = _eval_plan(tmp_path, {"noise_multiplier": z_eval, "bound": 17.0, "epsilon": one}, "twin")  # another plan
    assert "exhausted" in ledger.eval_budget_refusal(twin, "test", [noised, twin])  # a second one does not fit
    ledger.close()
    assert evaluation_epsilon(noised.privacy)[0] == pytest.approx(one, rel=1e-12)
    assert evaluation_epsilon(plain.privacy) == (math.inf, 0.0)


def test_site_plan_show_says_how_evaluation_metrics_leave(tmp_path):
    from click.testing import CliRunner

    from tffprod.cli.main import cli

    _eval_plan(tmp_path, {"noise_multiplier": 4.0, "bound": 16.2, "epsilon": 1.0}, "noised")
    _eval_plan(tmp_path, None, "plain")
    shown = {}
    for name in ("noised", "plain"):
        result = CliRunner().invoke(cli, ["site", "plan", "show", str(tmp_path / f"{name}.json")])
        assert result.exit_code == 0, result.output
        shown[name] = result.output
    assert "evaluation metrics noised at each site (multiplier 4, at most 16.2 per example" in shown["noised"]
    assert "evaluation metrics leave un-noised" in shown["plain"]
