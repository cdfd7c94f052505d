"""A repeat of an identical training release is free at the site; anything else is a new round.

The ledger is a real SQLite file; a release is identified by ``release_digest`` of its request.
TF-free.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import grpc
import pytest

from tffprod.privacy.accounting import epsilon_for
from tffprod.protocol.plan_document import PLAN_FORMAT, canonical_id, load_plan
from tffprod.executors.approvals import approve
from tffprod.executors.datarefs import CatalogEntry, RequestRefused
from tffprod.executors.release import release_digest
from tffprod.executors.ledger import Release, SiteLedger
from tffprod.protocol import release_pb2
from tffprod.protocol.tensors import from_numpy
from tests.helpers.site_plans import computation_entry, site_computation

SITE = "bank-a"
Z, DELTA = 1.1, 1e-5
D1, D2, D3 = (hashlib.sha256(n).hexdigest() for n in (b"call 1", b"call 2", b"call 3"))


def _approve(tmp_path: Path, *, rounds: int, budget=None, name: str = "train-step") -> tuple:
    """A plan with one training computation, approved at SITE; ``(approval, computation)``."""
    comp = site_computation(name)
    body = {
        "format": PLAN_FORMAT, "created_at": "2026-11-25T00:00:00+00:00",
        "session": {"name": name, "rounds": rounds, "seed": 0, "min_sites": 1},
        "spec": {"task": "tffprod.examples.fraud:task"}, "task": {"task": "tffprod.examples.fraud:task"},
        "privacy": {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA,
                    "sampling_rate": 1.0, "accountant": "rdp", "unit": "site dataset (site-level)",
                    "planned_epsilon": 1.0},
        "datasets": [{"role": "train", "ref": f"{SITE}/train:1", "site": SITE, "name": "train",
                      "content_hash": "sha256:abc", "num_examples": 10}],
        "coordinators": {},
        "computations": [computation_entry(comp)],
    }
    path = tmp_path / f"{name}.plan.json"
    path.write_text(json.dumps({**body, "plan_id": canonical_id(body)}))
    catalog = {"train": CatalogEntry("train", "/data/train.csv", "csv", {}, 10, "sha256:abc", budget)}
    return approve(load_plan(path), site=SITE, catalog=catalog, state_dir=tmp_path / "state"), comp


def _budget(rounds: int) -> dict:
    return {"epsilon": epsilon_for(noise_multiplier=Z, rounds=rounds, delta=DELTA) * (1 + 1e-9), "delta": DELTA}


@pytest.fixture
def ledger(tmp_path):
    ledger = SiteLedger(tmp_path / "state" / "ledger.sqlite", site=SITE, budgets={})
    yield ledger
    ledger.close()


# ---------------------------------------------------------------- the ledger


def test_a_repeat_is_admitted_after_the_approved_rounds_and_recorded_once(tmp_path, ledger):
    approval, _ = _approve(tmp_path, rounds=2)
    assert ledger.record_call(ledger.admit([approval], [approval], D1), "coordinator", D1) == Release(1, False)
    assert ledger.record_call(ledger.admit([approval], [approval], D2), "coordinator", D2) == Release(2, False)
    with pytest.raises(RequestRefused, match="has used all 2 approved round") as refused:
        ledger.admit([approval], [approval], D3)  # a new digest: a new round, refused as before
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(RequestRefused, match="has used all 2 approved round"):
        ledger.admit([approval], [approval])  # no digest: never a repeat
    assert ledger.admit([approval], [approval], D1) == approval  # the same call again: free
    assert ledger.record_call(approval, "coordinator", D1) == Release(1, True)
    assert ledger.record(approval, "coordinator", D2) == 2
    assert ledger.served(approval.plan_id) == 2 and ledger.repeat_of(approval.plan_id, D2) == 2


def test_a_repeat_is_free_on_an_exhausted_budget_and_spends_nothing(tmp_path):
    approval, _ = _approve(tmp_path, rounds=10, budget=_budget(2))
    ledger = SiteLedger(tmp_path / "state" / "budgeted.sqlite", site=SITE, budgets={"train": _budget(2)})
    for digest in (D1, D2):
        ledger.record(ledger.admit([approval], [approval], digest), "coordinator", digest)
    spent = ledger.spent("train", [approval])
    with pytest.raises(RequestRefused, match="privacy budget of dataset 'train' exhausted: round 3"):
        ledger.admit([approval], [approval], D3)
    assert ledger.admit([approval], [approval], D2) == approval
    assert ledger.record_call(approval, "coordinator", D2) == Release(2, True)
    assert ledger.spent("train", [approval]) == spent
    ledger.close()


def test_calls_without_a_digest_and_other_plans_calls_are_new_rounds(tmp_path, ledger):
    first, _ = _approve(tmp_path, rounds=5, name="first")
    second, _ = _approve(tmp_path, rounds=5, name="second")
    assert [ledger.record(first, "coordinator") for _ in range(2)] == [1, 2]  # NULL digests never clash
    assert ledger.record(first, "coordinator", D1) == 3
    assert ledger.repeat_of(second.plan_id, D1) is None
    assert ledger.record_call(second, "coordinator", D1) == Release(1, False)  # per plan
    assert ledger.record_call(second, "coordinator", D1) == Release(1, True)
    assert (ledger.served(first.plan_id), ledger.served(second.plan_id)) == (3, 1)


def test_a_repeat_is_preferred_to_a_new_round_of_another_candidate(tmp_path, ledger):
    first, _ = _approve(tmp_path, rounds=5, name="first")
    second, _ = _approve(tmp_path, rounds=5, name="second")
    ledger.record(second, "coordinator", D1)
    assert ledger.admit([first, second], [first, second], D1) == second
    assert ledger.admit([first, second], [first, second], D2) == first


def test_two_ledgers_on_one_file_record_a_call_once(tmp_path, ledger):
    approval, _ = _approve(tmp_path, rounds=5)
    other = SiteLedger(ledger.path, site=SITE, budgets={})
    try:
        assert ledger.record_call(approval, "coordinator", D1) == Release(1, False)
        assert other.record_call(approval, "coordinator", D1) == Release(1, True)
        assert other.served(approval.plan_id) == 1
    finally:
        other.close()


def test_a_ledger_file_without_call_digests_is_migrated_and_keeps_its_rounds(tmp_path):
    approval, _ = _approve(tmp_path, rounds=3)
    path = tmp_path / "state" / "old-ledger.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE releases (plan_id TEXT NOT NULL, round INTEGER NOT NULL, "
                "identity TEXT, released_at TEXT NOT NULL, PRIMARY KEY (plan_id, round))")
    old.executemany("INSERT INTO releases VALUES (?, ?, ?, ?)",
                    [(approval.plan_id, n, "coordinator", "2026-11-25T00:00:00+00:00") for n in (1, 2)])
    old.commit()
    old.close()
    for _ in range(2):  # the second open finds it current
        ledger = SiteLedger(path, site=SITE, budgets={})
        try:
            assert ledger.served(approval.plan_id) == 2
            assert ledger.repeat_of(approval.plan_id, D1) is None
        finally:
            ledger.close()
    ledger = SiteLedger(path, site=SITE, budgets={})
    try:
        assert ledger.record_call(ledger.admit([approval], [approval], D1), "coordinator", D1) == Release(3, False)
        with pytest.raises(RequestRefused, match="has used all 3 approved round"):
            ledger.admit([approval], [approval], D2)
        assert ledger.admit([approval], [approval], D1) == approval
    finally:
        ledger.close()
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(releases)")]
    assert columns == ["plan_id", "round", "identity", "released_at", "call_digest"]


# ---------------------------------------------------------------- release digests


def _request(*, round_num=1, weights=(1.0, 2.0), clients=(0, 3), role="train") -> release_pb2.ReleaseRequest:
    import numpy as np

    return release_pb2.ReleaseRequest(
        plan_id="p" * 64, role=role, round=round_num,
        datasets=[release_pb2.DatasetSelection(name="train", clients=list(clients))],
        state=[from_numpy(np.array(weights, dtype=np.float32))])


def test_the_same_release_requested_again_has_the_same_digest():
    assert release_digest(_request(), D1) == release_digest(_request(), D1)


@pytest.mark.parametrize("other", [
    dict(round_num=2), dict(weights=(1.0, 2.5)), dict(clients=(0, 4)), dict(clients=(3, 0)), dict(role="eval"),
])
def test_a_release_with_another_round_state_selection_or_role_is_another_release(other):
    assert release_digest(_request(**other), D1) != release_digest(_request(), D1)


def test_the_computation_is_part_of_the_digest():
    assert release_digest(_request(), D1) != release_digest(_request(), D2)
