"""Plans, approvals and the site's privacy ledger, without TensorFlow.

Plans here are built by hand from TFF's computation protos: what matters to a site is
that hashes, ids, sites, datasets and result types are checked, not what the
computation computes (the e2e tests run real ones).
"""

from __future__ import annotations

import json
import sys

import grpc
import pytest
from click.testing import CliRunner

from tffprod.privacy.accounting import epsilon_for
from tffprod.cli.main import cli
from tffprod.protocol.plan_document import PLAN_FORMAT, canonical_id, computation_sha256, load_plan
from tffprod.executors.approvals import ApprovalStore, approve
from tffprod.errors import PlanError
from tffprod.executors.datarefs import CatalogEntry, RequestRefused
from tffprod.executors.ledger import SiteLedger, charged_rounds
from tffprod.privacy.terms import plan_epsilon
from tffprod.protocol.protos import computation_pb2
from tests.helpers.plans import DELTA, SITE, Z, catalog, computation, plan_document, site_toml, write


# ---------------------------------------------------------------- plans


def test_a_plan_verifies_and_its_summary_has_no_computation_bytes(tmp_path):
    document = plan_document()
    plan = load_plan(write(tmp_path, document))
    assert plan.plan_id == document["plan_id"] and plan.sites == [SITE]
    summary = plan.summary()
    assert "proto" not in json.dumps(summary)
    assert summary["computations"][0]["sha256"] == computation_sha256(computation())


def test_an_edited_plan_is_refused(tmp_path):
    document = plan_document()
    document["session"]["rounds"] = 1000
    with pytest.raises(PlanError, match="does not match its plan id .*edited or forged"):
        load_plan(write(tmp_path, document))


def test_a_forged_computation_under_an_approved_hash_is_refused(tmp_path):
    approved_hash = computation_sha256(computation(name="honest"))
    document = plan_document(comp=computation(name="evil"), hashes=approved_hash)
    with pytest.raises(PlanError, match="computation 'train' does not match its sha256"):
        load_plan(write(tmp_path, document))


def test_a_computation_returning_client_values_is_refused(tmp_path):
    document = plan_document(comp=computation("clients", all_equal=False))
    with pytest.raises(PlanError, match="CLIENTS-placed values"):
        load_plan(write(tmp_path, document))


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable JSON plan"),
    ('{"format": "other"}', "not a tffprod-plan/2 plan"),
        ('{"format": "tffprod-plan/1"}', "made before sites checked release terms; make a new plan"),
    (json.dumps({"format": PLAN_FORMAT}), "'plan_id' is missing"),
])
def test_malformed_plans_get_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PlanError, match=message) as info:
        load_plan(path)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- approval


def test_approval_is_recorded_and_found_by_hash(tmp_path):
    plan = load_plan(write(tmp_path, plan_document()))
    approval = approve(plan, site=SITE, catalog=catalog(), state_dir=tmp_path / "state")
    store = ApprovalStore(tmp_path / "state")
    assert [a.plan_id for a in store.for_computation(computation_sha256(computation()))] == [plan.plan_id]
    assert store.for_computation("0" * 64) == []
    assert store.datasets() == {"train"} and approval.rounds == 3


def test_a_plan_for_other_sites_is_refused(tmp_path):
    plan = load_plan(write(tmp_path, plan_document(sites=("bank-b", "bank-c"))))
    with pytest.raises(PlanError, match="is for site\\(s\\) bank-b, bank-c, not bank-a"):
        approve(plan, site=SITE, catalog=catalog(), state_dir=tmp_path / "state")
    assert not (tmp_path / "state" / "approvals").exists()


def test_a_plan_bound_to_another_coordinator_is_refused_or_runs_only_for_it(tmp_path):
    plan = load_plan(write(tmp_path, plan_document(coordinator="rival")))
    with pytest.raises(PlanError, match="is for coordinator 'rival', which site bank-a does not serve"):
        approve(plan, site=SITE, catalog=catalog(), state_dir=tmp_path / "state", coordinators={"coordinator"})
    approve(plan, site=SITE, catalog=catalog(), state_dir=tmp_path / "state", coordinators={"coordinator", "rival"})
    store = ApprovalStore(tmp_path / "state")
    digest = computation_sha256(computation())
    assert store.for_computation(digest, "rival") and not store.for_computation(digest, "coordinator")


def test_a_plan_over_changed_or_unknown_data_is_refused(tmp_path):
    plan = load_plan(write(tmp_path, plan_document()))
    with pytest.raises(PlanError, match="changed at site bank-a"):
        approve(plan, site=SITE, catalog=catalog("sha256:other"), state_dir=tmp_path / "state")
    with pytest.raises(PlanError, match="names dataset 'train', which site bank-a does not serve"):
        approve(plan, site=SITE, catalog={}, state_dir=tmp_path / "state")


def test_a_damaged_approval_record_approves_nothing(tmp_path):
    folder = tmp_path / "state" / "approvals"
    folder.mkdir(parents=True)
    (folder / "junk.json").write_text("{")
    assert ApprovalStore(tmp_path / "state").all() == []


# ---------------------------------------------------------------- the site's ledger


def _ledger_and_approval(tmp_path, *, budget_rounds: float, rounds: int = 10):
    plan = load_plan(write(tmp_path, plan_document(rounds=rounds)))
    budget = {"epsilon": epsilon_for(noise_multiplier=Z, rounds=1, delta=DELTA) if budget_rounds == 1 else
              epsilon_for(noise_multiplier=Z, rounds=int(budget_rounds), delta=DELTA) * (1 + 1e-9), "delta": DELTA}
    approval = approve(plan, site=SITE, catalog=catalog(budget=budget), state_dir=tmp_path / "state")
    ledger = SiteLedger(tmp_path / "state" / "ledger.sqlite", site=SITE, budgets={"train": budget})
    return ledger, approval


def test_the_ledger_admits_rounds_until_the_budget_and_remembers_them(tmp_path):
    ledger, approval = _ledger_and_approval(tmp_path, budget_rounds=3)
    for expected in (1, 2, 3):
        assert ledger.admit([approval], [approval]) == approval
        assert ledger.record(approval, "coordinator") == expected
    with pytest.raises(RequestRefused, match="privacy budget of dataset 'train' exhausted: round 4") as info:
        ledger.admit([approval], [approval])
    assert info.value.code is grpc.StatusCode.PERMISSION_DENIED
    epsilon, delta = ledger.spent("train", [approval])
    assert epsilon == pytest.approx(epsilon_for(noise_multiplier=Z, rounds=3, delta=DELTA)) and delta == DELTA
    ledger.close()
    reopened = SiteLedger(tmp_path / "state" / "ledger.sqlite", site=SITE, budgets={})
    assert reopened.served(approval.plan_id) == 3  # a site restart forgets nothing
    reopened.close()


def test_a_plan_gets_no_more_rounds_than_approved(tmp_path):
    ledger, approval = _ledger_and_approval(tmp_path, budget_rounds=100, rounds=2)
    for _ in range(2):
        ledger.record(ledger.admit([approval], [approval]), "coordinator")
    with pytest.raises(RequestRefused, match="has used all 2 approved round"):
        ledger.admit([approval], [approval])
    ledger.close()


def test_a_sampled_plan_is_charged_all_its_rounds_from_its_first_release(tmp_path):
    q, rounds = 0.1, 5
    privacy = {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA, "sampling_rate": q,
               "accountant": "rdp", "unit": "client (column cid)", "planned_epsilon": 1.0}
    whole = epsilon_for(noise_multiplier=Z, rounds=rounds, delta=DELTA, sampling_rate=q)
    budget = {"epsilon": whole * (1 + 1e-9), "delta": 2 * DELTA}
    documents = [plan_document(rounds=rounds, privacy={**privacy, "planned_epsilon": n}) for n in (1.0, 2.0)]
    first, second = (approve(load_plan(write(tmp_path, document, f"{i}.json")), site=SITE,
                             catalog=catalog(budget=budget), state_dir=tmp_path / f"state-{i}")
                     for i, document in enumerate(documents))
    ledger = SiteLedger(tmp_path / "l.sqlite", site=SITE, budgets={"train": budget})
    assert charged_rounds(first, 0) == 0 and ledger.spent("train", [first]) == (0.0, 0.0)
    ledger.record(ledger.admit([first], [first]), "coordinator")
    # One round served, but the model's guarantee composes all of them (rounds that sampled nobody here too).
    assert charged_rounds(first, 1) == rounds
    assert ledger.spent("train", [first]) == (pytest.approx(whole), DELTA)
    assert whole > epsilon_for(noise_multiplier=Z, rounds=1, delta=DELTA, sampling_rate=q)
    with pytest.raises(RequestRefused, match="privacy budget of dataset 'train' exhausted"):
        ledger.admit([second], [first, second])  # the first plan holds the whole budget
    for _ in range(rounds - 1):  # the plan's own later rounds are already paid for
        ledger.record(ledger.admit([first], [first, second]), "coordinator")
    ledger.close()


def test_a_sampled_plan_that_does_not_fit_whole_is_refused_at_its_first_round(tmp_path):
    privacy = {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA,
               "fixed_sample": [80, 8], "accountant": "rdp", "unit": "client (column cid)", "planned_epsilon": 1.0}
    whole = epsilon_for(noise_multiplier=Z, rounds=4, delta=DELTA, fixed_sample=(80, 8))
    budget = {"epsilon": whole * 0.9, "delta": DELTA}  # enough for 3 of the 4 rounds, not for the plan
    approval = approve(load_plan(write(tmp_path, plan_document(rounds=4, privacy=privacy))), site=SITE,
                       catalog=catalog(budget=budget), state_dir=tmp_path / "state")
    ledger = SiteLedger(tmp_path / "l.sqlite", site=SITE, budgets={"train": budget})
    with pytest.raises(RequestRefused, match=r"exhausted: round 1 of plan \w+ would bring epsilon to "):
        ledger.admit([approval], [approval])
    assert ledger.served(approval.plan_id) == 0
    ledger.close()


def test_plans_without_dp_cannot_touch_budgeted_data(tmp_path):
    plan = load_plan(write(tmp_path, plan_document(privacy={"mechanism": "none", "unit": "none"})))
    approval = approve(plan, site=SITE, catalog=catalog(), state_dir=tmp_path / "state")
    ledger = SiteLedger(tmp_path / "l.sqlite", site=SITE, budgets={"train": {"epsilon": 1.0, "delta": 1e-5}})
    with pytest.raises(RequestRefused, match="has a privacy budget; plan .* uses no DP"):
        ledger.admit([approval], [approval])
    ledger.close()
    assert plan_epsilon({"mechanism": "none"}, 0) == (0.0, 0.0)


# ---------------------------------------------------------------- CLI


def test_site_plan_show_and_a_refused_approval_through_the_cli(tmp_path):
    path = write(tmp_path, plan_document(sites=("bank-b",)))
    shown = CliRunner().invoke(cli, ["site", "plan", "show", str(path)])
    assert shown.exit_code == 0, shown.output
    assert computation_sha256(computation()) in shown.output and "bank-b/train" in shown.output
    assert "the coordinator sends only: w" in shown.output and "fixed by the plan: lr = 0.1" in shown.output
    assert "released only if the L2 norm of result 0 is at most 1 per client" in shown.output
    config = site_toml(tmp_path)
    refused = CliRunner().invoke(cli, ["site", "approve", str(path), "--config", str(config)])
    assert refused.exit_code == 10 and "not bank-a" in refused.output
    assert not (tmp_path / "state" / "approvals").exists()
    (line,) = [json.loads(x) for x in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert line["method"] == "approve" and line["status"] == "REFUSED" and "not bank-a" in line["detail"]


def test_plan_commands_import_no_tensorflow(tmp_path):
    path = write(tmp_path, plan_document())
    code = ("import sys; from click.testing import CliRunner; from tffprod.cli.main import cli; "
            f"r = CliRunner().invoke(cli, ['site', 'plan', 'show', {str(path)!r}, '--json']); "
            "assert r.exit_code == 0, r.output; print('tensorflow' in sys.modules)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_dataset_trained_client_by_client_cannot_be_read_whole(tmp_path):
    from tffprod.executors.datarefs import DataRefs
    from tffprod.protocol.protos import array_pb2, data_type_pb2, executor_pb2

    document = plan_document()
    body = {k: v for k, v in document.items() if k != "plan_id"}
    body["datasets"][0]["client_id"] = "customer_id"
    plan = load_plan(write(tmp_path, {**body, "plan_id": canonical_id(body)}))
    approve(plan, site=SITE, catalog=catalog(), state_dir=tmp_path / "state")
    allowed = ApprovalStore(tmp_path / "state").datasets()
    assert allowed == {"train#"}

    entry = CatalogEntry("train", "/data/train.csv", "csv", {}, 4, "sha256:abc", None, "customer_id", 2,
                         ("/state/clients/0.csv", "/state/clients/1.csv"))
    refs = DataRefs(SITE, {"train": entry})

    def request(ref: bytes) -> bytes:
        clients = computation_pb2.FederatedType(
            placement=computation_pb2.PlacementSpec(value=computation_pb2.Placement(uri="clients")), all_equal=False,
            member=computation_pb2.Type(tensor=computation_pb2.TensorType(dtype=data_type_pb2.DT_STRING)))
        member = executor_pb2.Value(array=array_pb2.Array(dtype=data_type_pb2.DT_STRING, shape=array_pb2.ArrayShape(),
                                                          string_list=array_pb2.Array.BytesList(value=[ref])))
        value = executor_pb2.Value(federated=executor_pb2.Value.Federated(type=clients, value=[member]))
        return executor_pb2.CreateValueRequest(value=value).SerializeToString()

    assert b"/state/clients/1.csv" in refs.names_to_paths(request(b"train#1"), allowed=allowed)
    with pytest.raises(RequestRefused, match="approved only client by client") as info:
        refs.names_to_paths(request(b"train"), allowed=allowed)
    assert info.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_a_budget_exhausted_by_delta_says_so(tmp_path):
    privacy = {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA,
               "sampling_rate": 1.0, "accountant": "rdp", "unit": "site dataset (site-level)", "planned_epsilon": 1.0}
    budget = {"epsilon": 1e6, "delta": DELTA / 2}  # epsilon to spare, delta not
    approval = approve(load_plan(write(tmp_path, plan_document(rounds=1, privacy=privacy))), site=SITE,
                       catalog=catalog(budget=budget), state_dir=tmp_path / "state")
    ledger = SiteLedger(tmp_path / "l.sqlite", site=SITE, budgets={"train": budget})
    with pytest.raises(RequestRefused, match=r"would bring delta to 1e-05 \(budget 5e-06\)$"):
        ledger.admit([approval], [approval])
    ledger.close()
