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

Repeats. The guard also keeps a 32-byte digest of every argument value it can
follow: a ``CreateValue`` of data is the SHA-256 of the value's deterministic
serialization (as the coordinator sent it, catalog names and all), and a
``CreateStruct`` of tracked values is the SHA-256 over its elements' names and
digests. TFF's execution context sends a call's argument ``<state, refs>`` as
one ``CreateValue`` per element and a ``CreateStruct``. A training call is then
identified by its call digest, the SHA-256 of the computation's SHA-256 and the
argument's digest: the ledger admits a call the plan has already released as a
repeat (the same function of the same inputs, e.g. the round a resumed
coordinator re-runs) and counts no new round for it. A call whose argument the
guard cannot follow (a selection, another call's result) has no digest and is
always a new round.

TF-free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from typing import Any, Optional

import grpc

from tffprod.executors.approvals import Approval, ApprovalStore, computation_sha256
from tffprod.executors.datarefs import RequestRefused
from tffprod.executors.ledger import SiteLedger
from tffprod.executors.protos import executor_pb2

__all__ = ["ComputationGuard", "PendingCall", "call_digest", "struct_digest"]


@dataclasses.dataclass
class PendingCall:
    """An approved computation's call: which plan it counts against."""

    sha256: str
    role: str
    approval: Approval
    call_digest: Optional[str] = None  # hex; None when the argument could not be followed
    released_round: Optional[int] = None
    repeat: bool = False


def _has_sequence(value: Any) -> bool:
    kind = value.WhichOneof("value")
    if kind == "sequence":
        return True
    if kind == "struct":
        return any(_has_sequence(e.value) for e in value.struct.element)
    if kind == "federated":
        return any(_has_sequence(m) for m in value.federated.value)
    return False


def call_digest(computation_sha256: str, argument: Optional[bytes]) -> Optional[str]:
    """The hex SHA-256 identifying a call of ``computation_sha256`` on an argument with digest
    ``argument``; None for an argument that is unknown (or absent)."""
    if argument is None:
        return None
    return hashlib.sha256(bytes.fromhex(computation_sha256) + argument).hexdigest()


def struct_digest(elements: list[tuple[str, bytes]]) -> bytes:
    """The digest of a struct from its elements' ``(name, digest)`` pairs, in order."""
    h = hashlib.sha256(b"tffprod.struct\0")
    for name, digest in elements:
        encoded = name.encode("utf-8")
        h.update(len(encoded).to_bytes(4, "big") + encoded + digest)
    return h.digest()


class ComputationGuard:
    """Approval checks and release bookkeeping for one gateway."""

    def __init__(self, site: str, store: ApprovalStore, ledger: SiteLedger) -> None:
        self.site = site
        self.store = store
        self.ledger = ledger
        self._lock = threading.Lock()
        self._functions: dict[tuple[str, str], str] = {}  # (executor, value id) -> computation sha256
        self._arguments: dict[tuple[str, str], bytes] = {}  # (executor, value id) -> 32-byte value digest
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
        """Remember the new value: an approved computation's hash, or data's digest (see the module doc)."""
        ref = executor_pb2.CreateValueResponse.FromString(response).value_ref.id
        if digest is None:
            value = hashlib.sha256(message.value.SerializeToString(deterministic=True)).digest()
            with self._lock:
                self._arguments[(message.executor.id, ref)] = value
            return
        with self._lock:
            self._functions[(message.executor.id, ref)] = digest

    # -- CreateStruct --------------------------------------------------------------------------

    def struct_created(self, request: bytes, response: bytes) -> None:
        """Remember a struct's digest when every element's is known (nothing is checked here)."""
        message = executor_pb2.CreateStructRequest.FromString(request)
        executor = message.executor.id
        ref = executor_pb2.CreateStructResponse.FromString(response).value_ref.id
        with self._lock:
            digests = [self._arguments.get((executor, e.value_ref.id)) for e in message.element]
            if all(d is not None for d in digests):
                self._arguments[(executor, ref)] = struct_digest(
                    [(e.name, d) for e, d in zip(message.element, digests)])

    # -- CreateCall ----------------------------------------------------------------------------

    def check_call(self, request: bytes, identity: Optional[str],
                   federation: Optional[str] = None) -> tuple[executor_pb2.CreateCallRequest, PendingCall]:
        message = executor_pb2.CreateCallRequest.FromString(request)
        with self._lock:
            digest = self._functions.get((message.executor.id, message.function_ref.id))
            argument = (self._arguments.get((message.executor.id, message.argument_ref.id))
                        if message.HasField("argument_ref") else None)
        if digest is None:
            raise self._denied("runs only approved computations; the called function is not one")
        approvals = self.store.for_computation(digest, identity, federation)
        if not approvals:
            raise self._denied(f"computation sha256 {digest} is no longer approved")
        role = approvals[0].computations[digest]
        call = call_digest(digest, argument)
        if role == "train":
            approval = self.ledger.admit(approvals, self.store.all(), call)
        else:
            approval = approvals[0]
        return message, PendingCall(digest, role, approval, call)

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
        """Record a release (a training round in the ledger, once per call); the audit fields.

        A repeat of a call the plan has released is audited with ``"repeat": true`` and the
        round it repeats.
        """
        if pending.role == "train" and pending.released_round is None:
            pending.released_round, pending.repeat = self.ledger.record_call(pending.approval, identity,
                                                                             pending.call_digest)
        release = {"plan": pending.approval.plan_id, "role": pending.role, "computation": pending.sha256,
                   "round": pending.released_round}
        if pending.repeat:
            release["repeat"] = True
        return {"release": release}

    # -- Dispose -------------------------------------------------------------------------------

    def disposed(self, request: bytes) -> None:
        message = executor_pb2.DisposeRequest.FromString(request)
        keys = {(message.executor.id, ref.id) for ref in message.value_ref}
        with self._lock:
            for key in keys:
                self._functions.pop(key, None)
                self._arguments.pop(key, None)
                self._calls.pop(key, None)

    def executor_disposed(self, request: bytes) -> None:
        executor = executor_pb2.DisposeExecutorRequest.FromString(request).executor.id
        with self._lock:
            for table in (self._functions, self._arguments, self._calls):
                for key in [k for k in table if k[0] == executor]:
                    del table[key]
