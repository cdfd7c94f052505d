"""User-level DP end to end: the fraud example with many customers per bank, clients sampled each round.

The registry's epsilon must equal an independent ``dp_accounting`` computation from the
same q, noise multiplier, rounds and delta (the issue's "done when").
"""

from __future__ import annotations

import contextlib

import pytest

from tffprod.backends.local import LocalBackend
from tffprod.data.register import register_dataset
from tffprod.examples import fraud
from tffprod.registry import Registry
from tffprod.sessions.runner import train
from tffprod.sessions.spec import SessionSpec

pytestmark = pytest.mark.e2e

BANKS = list(fraud.FRAUD_RATES)
Q, Z, DELTA, ROUNDS = 0.05, 1.0, 1e-5, 3


def test_user_level_dp_on_fraud_reports_the_independent_epsilon(tmp_path):
    import dp_accounting
    from dp_accounting import pld, rdp

    paths = fraud.prepare(tmp_path / "data", n_per_bank=1000, customers_per_bank=100)
    with Registry.open(tmp_path / "tffprod.db") as registry:
        for bank in BANKS:
            row = register_dataset(registry, f"{bank}/train", paths[bank]["train"], schema=fraud.SCHEMA,
                                   client_id=fraud.CUSTOMER_ID)
            assert row["client_id"] == fraud.CUSTOMER_ID and row["num_clients"] == 100
            register_dataset(registry, f"{bank}/test", paths[bank]["test"], schema=fraud.SCHEMA)
        spec = SessionSpec.from_dict({
            "name": "fraud-user-dp", "task": "tffprod.examples.fraud:task", "rounds": ROUNDS, "seed": 3,
            "datasets": [f"{b}/train" for b in BANKS], "eval_datasets": [f"{b}/test" for b in BANKS],
            "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA},
            "sampling": {"client_rate": Q},
        })
        result = train(spec, registry=registry, backend=LocalBackend(log_dir=tmp_path / "logs"))
        rounds = registry.list_rounds(result["id"])
        report = registry.privacy_report(site="bank-a", name="train")

    assert result["status"] == "finished" and len(rounds) == ROUNDS
    assert result["privacy"]["unit"] == "client (column customer_id)" and result["privacy"]["clients"] == 300
    # Only sampled clients trained: about q * N = 15 a round, never everyone.
    assert all(r["sampling_rate"] == Q and r["clients"] < 300 for r in rounds)
    assert sum(r["clients"] for r in rounds) > 0
    for r in rounds:
        assert r["clients"] == sum(p["clients"] for p in r["participants"] if p["status"] == "ok")

    event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(Z)),
                                              ROUNDS)
    rdp_eps = rdp.RdpAccountant().compose(event).get_epsilon(DELTA)
    pld_eps = pld.PLDAccountant().compose(event).get_epsilon(DELTA)
    version = result["model_version"]
    print(f"\nuser-level DP, q={Q}, z={Z}, {ROUNDS} rounds, delta={DELTA}: "
          f"epsilon RDP {version['epsilon']:.6g} (independent {rdp_eps:.6g}), "
          f"PLD {version['dp']['privacy']['epsilon']['pld']:.6g} (independent {pld_eps:.6g})")
    assert rounds[-1]["epsilon"] == pytest.approx(rdp_eps, rel=1e-9)
    assert version["epsilon"] == pytest.approx(rdp_eps, rel=1e-9)
    assert rounds[-1]["epsilon_pld"] == pytest.approx(pld_eps, rel=1e-9)
    assert version["dp"]["privacy"]["epsilon"] == {"rdp": pytest.approx(rdp_eps, rel=1e-9),
                                                   "pld": pytest.approx(pld_eps, rel=1e-9)}
    assert version["dp"]["privacy"]["unit"] == "client (column customer_id)"
    assert report[0]["unit"] == "client (column customer_id)"
    assert report[0]["spent"]["epsilon"] == pytest.approx(rdp_eps, rel=1e-9)
    assert report[0]["spent"]["epsilon_pld"] == pytest.approx(pld_eps, rel=1e-9)


@contextlib.contextmanager
def _customers(tmp_path, *, test: bool):
    """A registry with the fraud banks' training data, 100 customers each (and their test data)."""
    paths = fraud.prepare(tmp_path / "data", n_per_bank=1000, customers_per_bank=100)
    with Registry.open(tmp_path / "tffprod.db") as registry:
        for bank in BANKS:
            register_dataset(registry, f"{bank}/train", paths[bank]["train"], schema=fraud.SCHEMA,
                             client_id=fraud.CUSTOMER_ID)
            if test:
                register_dataset(registry, f"{bank}/test", paths[bank]["test"], schema=fraud.SCHEMA)
        yield registry


def test_noise_at_each_site_on_the_local_backend_is_accounted_for_every_sites_noise(tmp_path):
    """``noise_placement = "local"``: each simulated site noises its own release under a plan made for the
    session; the model's sum over at least min_sites = 3 releases is accounted at z * sqrt(3)."""
    import dp_accounting
    from dp_accounting import rdp

    q = 0.1
    with _customers(tmp_path, test=False) as registry:
        spec = SessionSpec.from_dict({
            "name": "fraud-local-noise", "task": "tffprod.examples.fraud:task", "rounds": 2, "seed": 3,
            "datasets": [f"{b}/train" for b in BANKS], "min_sites": len(BANKS),
            "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA,
                   "noise_placement": "local"},
            "sampling": {"client_rate": q},
        })
        result = train(spec, registry=registry, backend=LocalBackend(log_dir=tmp_path / "logs"),
                       artifacts_dir=tmp_path / "artifacts")
        rounds = registry.list_rounds(result["id"])
    assert result["status"] == "finished" and result["spec"]["plan_id"]
    assert list((tmp_path / "artifacts" / "fraud-local-noise").glob("plan-*.json"))
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(Z * len(BANKS) ** 0.5)), 2)
    assert rounds[-1]["epsilon"] == pytest.approx(rdp.RdpAccountant().compose(event).get_epsilon(DELTA), rel=1e-9)
    # Each simulated site drew its releases' noise from its own secret.
    assert sorted(p.parent.name for p in (tmp_path / "logs").glob("site-*-state/site-noise.key")) == \
        sorted(f"site-{b}-state" for b in BANKS)


@pytest.mark.parametrize("placement", ["coordinator", "distributed"])
def test_one_step_user_updates_compute_a_sites_sampled_customers_at_once(tmp_path, placement):
    """``user_update = "one_step"``: each site is one TFF client holding its sampled customers' shards;
    under the distributed placement the session runs under a plan (the release path's one-client form)."""
    import dp_accounting
    from dp_accounting import rdp

    q = 0.1
    with _customers(tmp_path, test=True) as registry:
        spec = SessionSpec.from_dict({
            "name": f"fraud-one-step-{placement}", "task": "tffprod.examples.fraud:task", "rounds": 3, "seed": 3,
            "datasets": [f"{b}/train" for b in BANKS], "eval_datasets": [f"{b}/test" for b in BANKS],
            "min_sites": len(BANKS) if placement != "coordinator" else 1,
            "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA,
                   "noise_placement": placement},
            "sampling": {"client_rate": q, "user_update": "one_step"},
        })
        result = train(spec, registry=registry, backend=LocalBackend(log_dir=tmp_path / "logs"),
                       artifacts_dir=tmp_path / "artifacts")
        rounds = registry.list_rounds(result["id"])
    assert result["status"] == "finished" and len(rounds) == 3
    assert all(0 < r["clients"] < 300 for r in rounds)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(Z)), 3)
    assert rounds[-1]["epsilon"] == pytest.approx(rdp.RdpAccountant().compose(event).get_epsilon(DELTA), rel=1e-9)
    assert 0.0 <= result["model_version"]["metrics"]["eval"]["binary_accuracy"] <= 1.0
    train_metrics = result["model_version"]["metrics"]["train"]  # the last round's, as for FedAvg sessions
    assert train_metrics["num_users"] == rounds[-1]["clients"] and 0 < train_metrics["loss"] < 5
    assert train_metrics == rounds[-1]["metrics"]["client_work"]


def test_remote_sites_serve_sampled_customers_by_index(tmp_path):
    """Real site processes declare ``client_id``; the coordinator sends ``NAME#INDEX`` for k of N customers.

    The sites require approval: the session runs an approved plan, and each site's own ledger
    accounts the rounds it served with the plan's fixed-size sampling.
    """
    import dp_accounting
    from dp_accounting import rdp

    from tffprod.backends import create_backend
    from tffprod.executors.approvals import ApprovalStore, approve_at_site
    from tffprod.executors.config import load_site_config
    from tffprod.executors.ledger import LEDGER_FILE, SiteLedger
    from tffprod.privacy.terms import plan_epsilon
    from tffprod.sessions.approval import coordinator_identities, make_plan, write_plan
    from tffprod.sessions.runner import train_from_plan
    from tffprod.sessions.planning import plan_session

    from .conftest import running_federation

    paths = fraud.prepare(tmp_path / "data", n_per_bank=400, customers_per_bank=40)
    datasets = {bank: {"train": {"path": paths[bank]["train"], "task": "tffprod.examples.fraud:task",
                                 "client_id": fraud.CUSTOMER_ID},
                       "test": {"path": paths[bank]["test"], "task": "tffprod.examples.fraud:task"}}
                for bank in BANKS[:2]}
    with running_federation(tmp_path, datasets, computations="approved") as (fed, registry):
        rows = {row["ref"]: row for row in registry.list_datasets()}
        assert rows["bank-a/train:1"]["client_id"] == fraud.CUSTOMER_ID
        assert rows["bank-a/train:1"]["num_clients"] == 40 and rows["bank-a/test:1"]["num_clients"] == 1
        spec = SessionSpec.from_dict({
            "name": "fraud-user-dp-remote", "task": "tffprod.examples.fraud:task", "rounds": 2, "seed": 0,
            "datasets": [f"{b}/train" for b in BANKS[:2]], "eval_datasets": [f"{b}/test" for b in BANKS[:2]],
            "round_timeout_s": 120.0,
            "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA},
            "sampling": {"clients_per_round": 8},
        })
        session = plan_session(spec, registry=registry)
        plan_path = write_plan(
            make_plan(session, coordinators=coordinator_identities(registry, session.training_sites)),
            tmp_path / "plan.json",
        )
        for bank in BANKS[:2]:
            approve_at_site(plan_path, load_site_config(fed.site_config_path(bank)))
        result = train_from_plan(plan_path, registry=registry, backend=create_backend("remote", registry=registry))
        rounds = registry.list_rounds(result["id"])
        for bank in BANKS[:2]:
            config = load_site_config(fed.site_config_path(bank))
            approvals = ApprovalStore(config.state_dir).all()
            ledger = SiteLedger(config.state_dir / LEDGER_FILE, site=bank, budgets={})
            served = ledger.served(approvals[0].plan_id)
            ledger.close()
            called = sum(1 for r in rounds for p in r["participants"] if p["site"] == bank and p["status"] == "ok")
            assert served == called == 2  # with seed 0 both banks have sampled customers in both rounds
            assert approvals[0].privacy["fixed_sample"] == [80, 8]
            site_epsilon, _ = plan_epsilon(approvals[0].privacy, served)
            assert site_epsilon == pytest.approx(rounds[-1]["epsilon"], rel=1e-9)  # the two ledgers agree

    assert result["status"] == "finished" and [r["clients"] for r in rounds] == [8, 8]
    assert result["privacy"]["neighbouring"] == "replace one client"
    event = dp_accounting.SampledWithoutReplacementDpEvent(80, 8, dp_accounting.GaussianDpEvent(Z))
    acct = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    expected = acct.compose(event, 2).get_epsilon(DELTA)
    assert result["model_version"]["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert rounds[-1]["epsilon_pld"] is None  # dp_accounting's PLD cannot account fixed-size samples
    assert result["model_version"]["dp"]["privacy"]["epsilon"] == {"rdp": pytest.approx(expected, rel=1e-9),
                                                                   "pld": None}
    assert "eval" in result["model_version"]["metrics"]
