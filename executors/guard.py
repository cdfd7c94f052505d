"""What a coordinator may do at a site that requires approval.

The executor protocol builds a call step by step: ``CreateValue`` for the
computation and for each argument, ``CreateStruct``, ``CreateCall``, then
``Compute`` to fetch the result. Under approval the gateway follows the value
ids through those steps:

* ``CreateValue`` of a computation: its SHA-256 (deterministic serialization)
  must be in an approved plan; otherwise ``PERMISSION_DENIED`` naming the hash.
  Serialized datasets (``sequence`` values) are refused: data is named, never sent.
* ``CreateCall``: the function must be an approved computation created on this
  executor. A training computation's call is admitted by the site's ledger
  (rounds left in the plan, privacy budget left).
* ``Compute``: only the result of an approved call leaves the site (approved
  computations return aggregates only, checked at approval). Each release is
  audited with its plan, role and round; a training release is written to the
  ledger before the result is returned.

TF-free.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Optional

import grpc

from tffprod.executors.approvals import Approval, ApprovalStore, computation_sha256
from tffprod.executors.datarefs import RequestRefused
from tffprod.executors.ledger import SiteLedger
from tffprod.executors.protos import executor_pb2

__all__ = ["ComputationGuard", "PendingCall"]


@dataclasses.dataclass
class PendingCall:
    """An approved computation's call: which plan it counts against."""

    sha256: str
    role: str
    approval: Approval
    released_round: Optional[int] = None


def _has_sequence(value: Any) -> bool:
    kind = value.WhichOneof("value")
    if kind == "sequence":
        return True
    if kind == "struct":
        return any(_has_sequence(e.value) for e in value.struct.element)
    if kind == "federated":
        return any(_has_sequence(m) for m in value.federated.value)
    return False


class ComputationGuard:
    """Approval checks and release bookkeeping for one gateway."""

    def __init__(self, site: str, store: ApprovalStore, ledger: SiteLedger) -> None:
        self.site = site
        self.store = store
        self.ledger = ledger
        self._lock = threading.Lock()
        self._functions: dict[tuple[str, str], str] = {}  # (executor, value id) -> computation sha256
        self._calls: dict[tuple[str, str], PendingCall] = {}

    def _denied(self, detail: str) -> RequestRefused:
        return RequestRefused(grpc.StatusCode.PERMISSION_DENIED, f"site {self.site}: {detail}")

    # -- CreateValue ---------------------------------------------------------------------------

    def check_value(self, message: executor_pb2.CreateValueRequest, identity: Optional[str],
                    federation: Optional[str] = None) -> Optional[str]:
        """The approved computation's hash, None for data; raises for anything else."""
        value = message.value
        if value.WhichOneof("value") == "computation":
            digest = computation_sha256(value.computation)
            approvals = self.store.for_computation(digest)
            if not approvals:
                raise self._denied(f"computation sha256 {digest} is not approved "
                                   "(the site operator approves plans with 'tffprod site approve')")
            if not any(a.allows(identity, federation) for a in approvals):
                raise self._denied(f"computation sha256 {digest} is approved for another coordinator or "
                                   f"federation, not '{identity}' in federation '{federation or '-'}'")
            return digest
        if _has_sequence(value):
            raise self._denied("serialized datasets are not accepted; name a catalog dataset")
        return None

    def value_created(self, message: executor_pb2.CreateValueRequest, response: bytes, digest: Optional[str]) -> None:
        if digest is None:
            return
        ref = executor_pb2.CreateValueResponse.FromString(response).value_ref.id
        with self._lock:
            self._functions[(message.executor.id, ref)] = digest

    # -- CreateCall ----------------------------------------------------------------------------

    def check_call(self, request: bytes, identity: Optional[str],
                   federation: Optional[str] = None) -> tuple[executor_pb2.CreateCallRequest, PendingCall]:
        message = executor_pb2.CreateCallRequest.FromString(request)
        with self._lock:
            digest = self._functions.get((message.executor.id, message.function_ref.id))
        if digest is None:
            raise self._denied("runs only approved computations; the called function is not one")
        approvals = self.store.for_computation(digest, identity, federation)
        if not approvals:
            raise self._denied(f"computation sha256 {digest} is no longer approved")
        role = approvals[0].computations[digest]
        if role == "train":
            approval = self.ledger.admit(approvals, self.store.all())
        else:
            approval = approvals[0]
        return message, PendingCall(digest, role, approval)

    def call_created(self, message: executor_pb2.CreateCallRequest, response: bytes, pending: PendingCall) -> None:
        ref = executor_pb2.CreateCallResponse.FromString(response).value_ref.id
        with self._lock:
            self._calls[(message.executor.id, ref)] = pending

    # -- Compute -------------------------------------------------------------------------------

    def check_compute(self, request: bytes) -> PendingCall:
        message = executor_pb2.ComputeRequest.FromString(request)
        with self._lock:
            pending = self._calls.get((message.executor.id, message.value_ref.id))
        if pending is None:
            raise self._denied("releases only the results of approved computations")
        return pending

    def released(self, pending: PendingCall, identity: Optional[str]) -> dict[str, Any]:
        """Record a release (a training round in the ledger, once per call); the audit fields."""
        if pending.role == "train" and pending.released_round is None:
            pending.released_round = self.ledger.record(pending.approval, identity)
        return {"release": {"plan": pending.approval.plan_id, "role": pending.role,
                            "computation": pending.sha256, "round": pending.released_round}}

    # -- Dispose -------------------------------------------------------------------------------

    def disposed(self, request: bytes) -> None:
        message = executor_pb2.DisposeRequest.FromString(request)
        keys = {(message.executor.id, ref.id) for ref in message.value_ref}
        with self._lock:
            for key in keys:
                self._functions.pop(key, None)
                self._calls.pop(key, None)

    def executor_disposed(self, request: bytes) -> None:
        executor = executor_pb2.DisposeExecutorRequest.FromString(request).executor.id
        with self._lock:
            for table in (self._functions, self._calls):
                for key in [k for k in table if k[0] == executor]:
                    del table[key]
