"""A repeat of an identical training call is free at the site; anything else is a new round.

The ledger is a real SQLite file and the guard is driven with the executor protocol's
own messages (the worker's answers are written by hand: only the value ids matter).
TF-free.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from pathlib import Path

import grpc
import pytest

from tffprod.accounting import epsilon_for
from tffprod.executors.approvals import PLAN_FORMAT, ApprovalStore, approve, canonical_id, computation_sha256, load_plan
from tffprod.executors.datarefs import CatalogEntry, RequestRefused
from tffprod.executors.guard import ComputationGuard, struct_digest
from tffprod.executors.ledger import Release, SiteLedger
from tffprod.executors.protos import array_pb2, computation_pb2, data_type_pb2, executor_pb2

SITE = "bank-a"
Z, DELTA = 1.1, 1e-5
D1, D2, D3 = (hashlib.sha256(n).hexdigest() for n in (b"call 1", b"call 2", b"call 3"))


def _computation(name: str) -> computation_pb2.Computation:
    c = computation_pb2.Computation()
    result = c.type.function.result.federated
    result.placement.value.uri = "server"
    result.all_equal = True
    result.member.tensor.dtype = data_type_pb2.DT_FLOAT
    c.reference.name = name
    return c


def _approve(tmp_path: Path, *, rounds: int, budget=None, name: str = "train-step") -> tuple:
    """A plan with one training computation, approved at SITE; ``(approval, computation)``."""
    comp = _computation(name)
    data = comp.SerializeToString(deterministic=True)
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
        "computations": [{"role": "train", "sha256": computation_sha256(comp), "size_bytes": len(data),
                          "type_signature": "(x -> y@SERVER)", "proto": base64.b64encode(data).decode()}],
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


# ---------------------------------------------------------------- the guard


def _array(*values: bytes) -> executor_pb2.Value:
    return executor_pb2.Value(array=array_pb2.Array(
        dtype=data_type_pb2.DT_STRING, shape=array_pb2.ArrayShape(),
        string_list=array_pb2.Array.BytesList(value=list(values))))


class Coordinator:
    """Drives a guard the way the gateway does, answering as the worker would (fresh value ids)."""

    def __init__(self, guard: ComputationGuard, executor: str = "executor-1") -> None:
        self.guard = guard
        self.executor = executor_pb2.ExecutorId(id=executor)
        self._next = 0

    def _ref(self) -> executor_pb2.ValueRef:
        self._next += 1
        return executor_pb2.ValueRef(id=f"{self.executor.id}/v{self._next}")

    def value(self, value: executor_pb2.Value) -> executor_pb2.ValueRef:
        message = executor_pb2.CreateValueRequest(executor=self.executor, value=value)
        digest = self.guard.check_value(message, "coordinator")
        ref = self._ref()
        self.guard.value_created(message, executor_pb2.CreateValueResponse(value_ref=ref).SerializeToString(),
                                 digest)
        return ref

    def struct(self, *elements: executor_pb2.ValueRef, names: tuple[str, ...] = ()) -> executor_pb2.ValueRef:
        names = names or ("",) * len(elements)
        request = executor_pb2.CreateStructRequest(executor=self.executor, element=[
            executor_pb2.CreateStructRequest.Element(name=n, value_ref=e) for n, e in zip(names, elements)])
        ref = self._ref()
        self.guard.struct_created(request.SerializeToString(),
                                  executor_pb2.CreateStructResponse(value_ref=ref).SerializeToString())
        return ref

    def call(self, function: executor_pb2.ValueRef, argument: executor_pb2.ValueRef | None) -> dict:
        """CreateCall and Compute of its result: the release's audit fields."""
        request = executor_pb2.CreateCallRequest(executor=self.executor, function_ref=function,
                                                 argument_ref=argument)
        message, pending = self.guard.check_call(request.SerializeToString(), "coordinator")
        ref = self._ref()
        self.guard.call_created(message, executor_pb2.CreateCallResponse(value_ref=ref).SerializeToString(), pending)
        compute = executor_pb2.ComputeRequest(executor=self.executor, value_ref=ref)
        return self.guard.released(self.guard.check_compute(compute.SerializeToString()), "coordinator")["release"]

    def round(self, comp: computation_pb2.Computation, state: bytes, refs: tuple[bytes, ...] = (b"train",)) -> dict:
        """What TFF's execution context sends for ``comp(<state, refs>)``."""
        argument = self.struct(self.value(_array(state)), self.value(_array(*refs)))
        return self.call(self.value(executor_pb2.Value(computation=comp)), argument)

    def dispose(self, *refs: executor_pb2.ValueRef) -> None:
        self.guard.disposed(executor_pb2.DisposeRequest(executor=self.executor, value_ref=refs).SerializeToString())

    def dispose_executor(self) -> None:
        self.guard.executor_disposed(executor_pb2.DisposeExecutorRequest(executor=self.executor).SerializeToString())


@pytest.fixture
def guard(tmp_path, ledger):
    return ComputationGuard(SITE, ApprovalStore(tmp_path / "state"), ledger)


def test_the_same_round_resent_by_a_new_coordinator_is_a_repeat(tmp_path, guard, ledger):
    approval, comp = _approve(tmp_path, rounds=1)
    first = Coordinator(guard, "executor-1").round(comp, b"state 0")
    assert first == {"plan": approval.plan_id, "role": "train", "computation": computation_sha256(comp), "round": 1}
    resumed = Coordinator(guard, "executor-2")  # the coordinator died; a new one resumes round 1
    assert resumed.round(comp, b"state 0") == {**first, "repeat": True}
    assert resumed.round(comp, b"state 0") == {**first, "repeat": True}
    assert ledger.served(approval.plan_id) == 1
    for state, refs in ((b"state 1", (b"train",)), (b"state 0", (b"train", b"train")), (b"state 0", (b"test",))):
        with pytest.raises(RequestRefused, match=r"plan [0-9a-f]{16} has used all 1 approved round\(s\)"):
            resumed.round(comp, state, refs)  # any other argument is a new round, refused as before
    assert ledger.served(approval.plan_id) == 1


def test_a_different_argument_is_a_new_round(tmp_path, guard, ledger):
    approval, comp = _approve(tmp_path, rounds=3)
    coordinator = Coordinator(guard)
    assert coordinator.round(comp, b"state 0")["round"] == 1
    assert coordinator.round(comp, b"state 1")["round"] == 2
    assert coordinator.round(comp, b"state 0") == {"plan": approval.plan_id, "role": "train",
                                                   "computation": computation_sha256(comp), "round": 1,
                                                   "repeat": True}
    swapped = coordinator.struct(coordinator.value(_array(b"train")), coordinator.value(_array(b"state 0")))
    assert coordinator.call(coordinator.value(executor_pb2.Value(computation=comp)), swapped)["round"] == 3
    assert ledger.served(approval.plan_id) == 3


def test_element_names_and_nesting_are_part_of_the_digest():
    a, b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    digests = {struct_digest([("", a), ("", b)]), struct_digest([("", b), ("", a)]),
               struct_digest([("x", a), ("", b)]), struct_digest([("", a + b)]),
               struct_digest([("", struct_digest([("", a), ("", b)]))]), struct_digest([("", a)])}
    assert len(digests) == 6 and struct_digest([("", a), ("", b)]) == struct_digest([("", a), ("", b)])


def test_arguments_the_guard_cannot_follow_are_always_new_rounds(tmp_path, guard, ledger):
    approval, comp = _approve(tmp_path, rounds=4)
    coordinator = Coordinator(guard)
    function = coordinator.value(executor_pb2.Value(computation=comp))
    untracked = executor_pb2.ValueRef(id="made-elsewhere")  # e.g. a selection or another call's result
    assert coordinator.call(function, untracked)["round"] == 1
    assert coordinator.call(function, untracked)["round"] == 2
    partly = coordinator.struct(coordinator.value(_array(b"state 0")), untracked)
    assert coordinator.call(function, partly)["round"] == 3
    assert coordinator.call(function, None)["round"] == 4  # no argument at all
    assert ledger.served(approval.plan_id) == 4


def test_disposed_values_lose_their_digests(tmp_path, guard, ledger):
    approval, comp = _approve(tmp_path, rounds=1)
    coordinator = Coordinator(guard)
    state, refs = coordinator.value(_array(b"state 0")), coordinator.value(_array(b"train"))
    argument = coordinator.struct(state, refs)
    function = coordinator.value(executor_pb2.Value(computation=comp))
    assert coordinator.call(function, argument)["round"] == 1
    assert coordinator.call(function, argument).get("repeat") is True
    coordinator.dispose(argument)
    with pytest.raises(RequestRefused, match="has used all 1 approved round"):
        coordinator.call(function, argument)  # the id may name anything now
    coordinator.dispose(state)
    with pytest.raises(RequestRefused, match="has used all 1 approved round"):
        coordinator.call(function, coordinator.struct(state, refs))
    again = coordinator.struct(coordinator.value(_array(b"state 0")), refs)
    assert coordinator.call(function, again).get("repeat") is True
    other = Coordinator(guard, "executor-2")
    other.value(_array(b"state 0"))
    coordinator.dispose_executor()
    with pytest.raises(RequestRefused, match="runs only approved computations"):
        coordinator.call(function, again)
    assert [key[0] for key in guard._arguments] == ["executor-2"]  # only the other executor's value is kept
    function = coordinator.value(executor_pb2.Value(computation=comp))
    with pytest.raises(RequestRefused, match="has used all 1 approved round"):
        coordinator.call(function, again)


def test_a_revoked_plan_gets_no_repeat(tmp_path, guard, ledger):
    approval, comp = _approve(tmp_path, rounds=1)
    coordinator = Coordinator(guard)
    assert coordinator.round(comp, b"state 0")["round"] == 1
    function = coordinator.value(executor_pb2.Value(computation=comp))
    argument = coordinator.struct(coordinator.value(_array(b"state 0")), coordinator.value(_array(b"train")))
    assert coordinator.call(function, argument)["repeat"] is True
    (tmp_path / "state" / "approvals" / f"{approval.plan_id}.json").unlink()  # the operator revokes the plan
    with pytest.raises(RequestRefused, match="is no longer approved"):
        coordinator.call(function, argument)
    with pytest.raises(RequestRefused, match="is not approved"):
        coordinator.round(comp, b"state 0")
