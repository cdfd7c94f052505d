"""Computation approval and the site's own privacy ledger, with real site processes over mTLS.

Sites here require approval (``computations = "approved"``) except where a test
shows the development policy. The coordinator makes a plan, each site approves it
through the CLI, and the session runs the plan's frozen computations.
"""

from __future__ import annotations

import json
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from tffprod.privacy.accounting import epsilon_for
from tffprod.backends import create_backend
from tffprod.cli.main import cli
from tffprod.sites.connection import SiteConnection
from tffprod.backends.contexts import channel_context
from tffprod.errors import SessionError
from tffprod.examples import digits
from tffprod.executors.approvals import ApprovalStore
from tffprod.protocol.plan_document import load_plan
from tffprod.executors.audit import read_audit_log
from tffprod.executors.config import load_site_config
from tffprod.executors.ledger import LEDGER_FILE, SiteLedger
from tffprod.models.export import export_artifact
from tffprod.sessions.approval import coordinator_identities, make_plan, write_plan
from tffprod.sessions.runner import train_from_plan
from tffprod.sessions.planning import plan_session
from tffprod.sites.admin import check_site
from tffprod.sessions.spec import SessionSpec

from .conftest import read_file_computation, running_federation, write_spec

pytestmark = pytest.mark.e2e

TASK = "tffprod.examples.digits:task"
SITES = digits.SITES[:2]
ALL_SITES = len(SITES)
Z, DELTA = 1.0, 1e-5
BUDGET_ROUNDS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("approval")
    return root, digits.prepare(root / "data")


@pytest.fixture(scope="module")
def budget_epsilon():
    # Just above what 3 rounds cost: the 4th never fits.
    return epsilon_for(noise_multiplier=Z, rounds=BUDGET_ROUNDS, delta=DELTA) * (1 + 1e-6)


@pytest.fixture(scope="module")
def approved(data, budget_epsilon):
    root, paths = data
    datasets = {site: {"train": {"path": paths[site]["train"], "task": TASK,
                                 "budget": {"epsilon": budget_epsilon, "delta": DELTA}},
                       "test": {"path": paths[site]["test"], "task": TASK}} for site in SITES}
    with running_federation(root, datasets, computations="approved") as (fed, registry):
        yield fed, registry


def _site_context(registry, site):
    return channel_context(SiteConnection.from_registry(registry.get_site(site)).channel())


def _plan(registry, path, *, rounds, on_budget="stop", min_sites=ALL_SITES):
    spec = SessionSpec.from_dict({
        "name": "digits-approved", "task": TASK, "datasets": [f"{s}/train" for s in SITES],
        "eval_datasets": [f"{s}/test" for s in SITES], "rounds": rounds, "seed": 0, "min_sites": min_sites,
        "round_timeout_s": 120.0, "backend": "remote",
        "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA,
               "on_budget": on_budget}})
    document = make_plan(plan_session(spec, registry=registry), coordinators=coordinator_identities(registry, SITES))
    assert set(document["coordinators"].values()) == {"coordinator"}  # bound to this coordinator's certificate
    write_plan(document, path)
    return path


def _approve_everywhere(fed, plan_path):
    for site in SITES:
        result = CliRunner().invoke(cli, ["site", "approve", str(plan_path), "--config",
                                          str(fed.site_config_path(site)), "--json"])
        assert result.exit_code == 0, result.output


def _site_state(fed, site):
    config = load_site_config(fed.site_config_path(site))
    return config, config.state_dir


def _site_spent(fed, site):
    config, state_dir = _site_state(fed, site)
    ledger = SiteLedger(state_dir / LEDGER_FILE, site=site,
                        budgets={name: decl.budget for name, decl in config.datasets.items()})
    try:
        return ledger.spent("train", ApprovalStore(state_dir).all())
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def approved_plan(approved, tmp_path_factory):
    """A 10-round DP plan over both sites' train data, approved at both sites."""
    fed, registry = approved
    plan_path = _plan(registry, tmp_path_factory.mktemp("plans") / "plan.json", rounds=10)
    _approve_everywhere(fed, plan_path)
    return plan_path


def test_raw_file_read_is_refused_under_approval(approved, approved_plan):
    """A site under approval does not serve TFF's executor protocol at all: no computation a caller
    sends can run, approved hash or not ('train' is even in the approved plan)."""
    fed, registry = approved
    site = SITES[0]
    with pytest.raises(Exception) as refused:
        _site_context(registry, site).invoke(read_file_computation(), ["train"])
    assert "UNIMPLEMENTED" in str(refused.value) or "unimplemented" in str(refused.value).lower()


def test_raw_file_read_works_only_under_the_explicit_development_policy(data, tmp_path):
    root, paths = data
    site = SITES[0]
    datasets = {site: {"train": {"path": paths[site]["train"], "task": TASK}}}
    with running_federation(tmp_path, datasets, computations="any") as (fed, registry):
        check = CliRunner().invoke(cli, ["site", "check", site, "--registry", str(tmp_path / "remote.db")])
        assert "WARNING" in check.output and "ANY computation" in check.output
        (stolen,) = _site_context(registry, site).invoke(read_file_computation(), ["train"])
    assert stolen == paths[site]["train"].read_bytes()


def test_budget_for_3_rounds_stops_a_10_round_plan_and_both_ledgers_agree(approved, approved_plan, tmp_path):
    fed, registry = approved
    plan_path = approved_plan
    result = train_from_plan(plan_path, registry=registry, backend=create_backend("remote", registry=registry))
    assert result["status"] == "finished" and result["rounds_completed"] == BUDGET_ROUNDS
    version = result["model_version"]
    assert "stopped after round 3 of 10" in version["metrics"]["stopped"]
    assert version["epsilon"] == pytest.approx(epsilon_for(noise_multiplier=Z, rounds=BUDGET_ROUNDS, delta=DELTA))
    assert "sparse_categorical_accuracy" in version["metrics"]["eval"]  # the approved eval computation ran
    saved = export_artifact(version["artifact_path"], tmp_path / "model")  # a usable, exported model
    predictions = tf.saved_model.load(str(saved)).signatures["serving_default"](
        pixels=tf.zeros([2, 64]))["predictions"].numpy()
    assert predictions.shape == (2, 10) and np.allclose(predictions.sum(axis=1), 1.0, atol=1e-5)
    plan_id = load_plan(plan_path).plan_id
    for site in SITES:
        (report,) = registry.privacy_report(site=site, name="train")
        site_epsilon, site_delta = _site_spent(fed, site)
        assert site_epsilon == pytest.approx(report["spent"]["epsilon"], rel=1e-6)
        assert site_delta == pytest.approx(report["spent"]["delta"])
        _, state_dir = _site_state(fed, site)
        releases = [line["release"] for line in read_audit_log(state_dir / "audit.jsonl") if "release" in line]
        assert [r["round"] for r in releases if r["role"] == "train" and r["plan"] == plan_id] == [1, 2, 3]
        assert any(r["role"] == "eval" and r["plan"] == plan_id for r in releases)
        shown = CliRunner().invoke(cli, ["site", "ledger", "--config", str(fed.site_config_path(site)), "--json"])
        assert shown.exit_code == 0, shown.output
        ledger = json.loads(shown.output)
        (served,) = [p["rounds_served"] for p in ledger["plans"] if p["plan_id"] == plan_id]
        (train_budget,) = [b for b in ledger["budgets"] if b["dataset"] == "train"]
        assert served == BUDGET_ROUNDS and train_budget["spent"]["epsilon"] == pytest.approx(site_epsilon)


def test_a_model_version_is_evaluated_at_approving_sites_only_through_an_evaluation_plan(approved, tmp_path):
    fed, registry = approved
    ref = "digits-approved"  # the version the budget test registered
    datasets = [arg for s in SITES for arg in ("--dataset", f"{s}/test")]
    common = ["--registry", str(registry.path)]
    runner = CliRunner()
    refused = runner.invoke(cli, ["eval", ref, *datasets, "--backend", "remote", *common])
    assert refused.exit_code == 10 and "evaluate only plans their operators approved; nothing was run" \
        in refused.output  # before anything runs, and says what to do
    assert f"'tffprod model eval-plan {ref} --dataset {SITES[0]}/test:1" in refused.output
    plan_path = tmp_path / "eval.plan.json"
    made = runner.invoke(cli, ["model", "eval-plan", ref, *datasets, "--out", str(plan_path), *common])
    assert made.exit_code == 0, made.output
    shown = runner.invoke(cli, ["site", "plan", "show", str(plan_path)])
    assert "eval " in shown.output and "train sha256" not in shown.output
    _approve_everywhere(fed, plan_path)
    ran = runner.invoke(cli, ["eval", ref, *datasets, "--backend", "remote", "--plan", str(plan_path), *common,
                              "--json"])
    assert ran.exit_code == 0, ran.output
    result = json.loads(ran.output)
    assert set(result["datasets"]) == {f"{s}/test:1" for s in SITES} and not result["errors"]
    assert 0.0 <= result["overall"]["sparse_categorical_accuracy"] <= 1.0
    again = runner.invoke(cli, ["eval", ref, *datasets, "--backend", "remote", "--plan", str(plan_path), *common,
                                "--json"])  # the same weights again: a repeat the sites release for free
    assert again.exit_code == 0, again.output  # (the output says which site refused what, if one did)
    assert json.loads(again.output)["overall"] == result["overall"]
    plan_id = load_plan(plan_path).plan_id
    for site in SITES:
        _, state_dir = _site_state(fed, site)
        releases = [line["release"] for line in read_audit_log(state_dir / "audit.jsonl")
                    if "release" in line and line["release"]["plan"] == plan_id]
        assert [(r["role"], r["datasets"], r.get("repeat", False)) for r in releases] == [
            ("eval", ["test"], False), ("eval", ["test"], True)]


def test_a_coordinator_that_ignores_its_ledger_is_stopped_by_the_site(approved, tmp_path, budget_epsilon):
    fed, registry = approved
    before = {site: _site_spent(fed, site) for site in SITES}
    assert all(eps > 0 for eps, _ in before.values()), "runs after the budget test"
    for site in SITES:  # the coordinator "forgets" what it spent: a fresh, huge budget
        registry.set_budget(site, "train", epsilon=1e6, delta=0.5, source="coordinator")
    plan_path = _plan(registry, tmp_path / "cheat.json", rounds=2, on_budget="refuse")
    _approve_everywhere(fed, plan_path)
    with pytest.raises(SessionError, match="privacy budget of dataset 'train' exhausted"):
        train_from_plan(plan_path, registry=registry, backend=create_backend("remote", registry=registry))
    for site in SITES:
        assert _site_spent(fed, site) == before[site]  # nothing more released
        _, state_dir = _site_state(fed, site)
        audit = read_audit_log(state_dir / "audit.jsonl")
        refusal = [line for line in audit if line["status"] == "PERMISSION_DENIED"][-1]
        assert "privacy budget of dataset 'train' exhausted" in refusal["detail"]  # audited
        assert check_site(registry, site)["ok"]  # and the site keeps serving


def test_session_plan_prints_the_epsilon_the_plan_will_spend_before_anyone_approves_it(approved, tmp_path):
    fed, registry = approved
    spec = write_spec(tmp_path / "spec.toml", name="digits-planned", task=TASK, datasets=[f"{s}/train" for s in SITES],
                      rounds=2, seed=0, min_sites=ALL_SITES, backend="remote",
                      dp={"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA})
    result = CliRunner().invoke(cli, ["session", "plan", "--spec", spec, "--out", str(tmp_path / "p.json"),
                                      "--registry", str(registry.path)])
    assert result.exit_code == 0, result.output
    expected = epsilon_for(noise_multiplier=Z, rounds=2, delta=DELTA)
    (line,) = [line for line in result.output.splitlines() if line.startswith("  privacy: ")]
    assert line.startswith(f"  privacy: epsilon {expected:.4g} at delta {DELTA:g} after all 2 rounds "
                           f"(gaussian_fixed, noise_multiplier {Z:g}; unit: "), line
    assert json.loads((tmp_path / "p.json").read_text())["privacy"]["planned_epsilon"] == pytest.approx(expected)


def test_session_run_from_a_spec_at_sites_requiring_approval_says_what_to_do_and_records_nothing(approved, tmp_path):
    import time

    fed, registry = approved
    spec = write_spec(tmp_path / "spec.toml", name="digits-unplanned", task=TASK, rounds=1, seed=0,
                      datasets=[f"{s}/train" for s in SITES], backend="remote", min_sites=ALL_SITES,
                      dp={"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA})
    before = registry.list_sessions()
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["session", "run", "--spec", spec, "--registry", str(registry.path)])
    took = time.perf_counter() - start
    assert result.exit_code == 10, result.output
    assert f"sites {', '.join(SITES)} run only plans their operators approved; nothing was run or recorded" \
        in result.output
    assert "'tffprod session plan --spec SPEC --out PLAN'" in result.output and "--plan PLAN" in result.output
    assert registry.list_sessions() == before
    print(f"\nsession run --spec at sites requiring approval: refused after {took:.2f} s")
