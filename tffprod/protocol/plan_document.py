"""The plan document: what a coordinator asks sites to approve, and how it verifies.

A coordinator freezes a session into a *plan* (``tffprod session plan``): a JSON
file with the session's settings, datasets, DP parameters and the compiled
computations that will run at sites, each as base64 ``Computation`` bytes with
its SHA-256 and its release terms. The plan's id is the SHA-256 of its canonical
JSON (everything but the id). :func:`load_plan` re-derives every hash from the
bytes, so an edited or forged plan does not load.

Both sides read it: the coordinator builds and runs plans (:mod:`tffprod.sessions.approval`),
a site approves them (:mod:`tffprod.executors.approvals`). TF-free: only ``json``,
``hashlib`` and TFF's generated protobuf modules.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from tffprod.errors import PlanError

__all__ = ["PLAN_FORMAT", "ROLES", "Plan", "canonical_id", "computation_sha256", "load_plan"]

PLAN_FORMAT = "tffprod-plan/2"  # 2: each computation carries its release terms (tffprod.protocol.terms)
ROLES = ("train", "eval", "compute")  # a training round, an evaluation, a custom computation


def canonical_id(body: Mapping[str, Any]) -> str:
    """SHA-256 hex of ``body`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def computation_sha256(computation: Any) -> str:
    """SHA-256 hex of a ``computation_pb2.Computation`` serialized deterministically."""
    return hashlib.sha256(computation.SerializeToString(deterministic=True)).hexdigest()


def _clients_placed(type_proto: Any) -> bool:
    """True if the ``Type`` proto contains a CLIENTS-placed value that is not all-equal."""
    kind = type_proto.WhichOneof("type")
    if kind == "federated":
        fed = type_proto.federated
        if fed.placement.value.uri == "clients" and not fed.all_equal:
            return True
        return _clients_placed(fed.member)
    if kind == "struct":
        return any(_clients_placed(e.value) for e in type_proto.struct.element)
    if kind == "function":  # a function value returned to the caller would carry code, not data
        return True
    return False


@dataclasses.dataclass(frozen=True)
class Plan:
    """A verified plan. ``document`` is the whole JSON; computations keep their bytes there."""

    plan_id: str
    document: dict

    @property
    def session(self) -> dict:
        return self.document["session"]

    @property
    def privacy(self) -> dict:
        return self.document["privacy"]

    @property
    def datasets(self) -> list[dict]:
        return self.document["datasets"]

    @property
    def sites(self) -> list[str]:
        return sorted({d["site"] for d in self.datasets})

    @property
    def computations(self) -> list[dict]:
        return self.document["computations"]

    @property
    def evaluation_only(self) -> bool:
        """An evaluation plan (``tffprod model eval-plan``): one model version on evaluation datasets."""
        return all(c["role"] == "eval" for c in self.computations)

    @property
    def computation_only(self) -> bool:
        """A plan of one custom federated computation (:func:`tffprod.sessions.analytics.make_computation_plan`)."""
        return all(c["role"] == "compute" for c in self.computations)

    def computation_bytes(self, role: str) -> Optional[bytes]:
        for entry in self.computations:
            if entry["role"] == role:
                return base64.b64decode(entry["proto"])
        return None

    def summary(self) -> dict[str, Any]:
        """What an operator reviews: everything but the computations' bytes."""
        document = {k: v for k, v in self.document.items() if k != "computations"}
        document["computations"] = [{k: v for k, v in c.items() if k != "proto"} for c in self.computations]
        return {"plan_id": self.plan_id, **document}


def _require(document: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(document, dict) or not isinstance(document.get(key), kind):
        raise PlanError(f"{where}: '{key}' is missing or not a {kind.__name__}")
    return document[key]


def load_plan(path: os.PathLike | str) -> Plan:
    """Read and verify a plan: its format, its id and every computation's hash and type.

    Raises:
        PlanError: unreadable, malformed, edited (an id or hash does not match its content),
            or a computation that would release CLIENTS-placed values.
    """
    from tffprod.protocol.protos import computation_pb2

    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlanError(f"plan {path}: not a readable JSON plan ({type(e).__name__})") from None
    except RecursionError:  # json recurses once per nested array or object
        raise PlanError(f"plan {path}: not a readable JSON plan (nested too deeply)") from None
    where = f"plan {path}"
    if isinstance(document, dict) and document.get("format") == "tffprod-plan/1":
        raise PlanError(f"{where}: a tffprod-plan/1 plan, made before sites checked release terms; make a new "
                        "plan with 'tffprod session plan'")
    if not isinstance(document, dict) or document.get("format") != PLAN_FORMAT:
        raise PlanError(f"{where}: not a {PLAN_FORMAT} plan")
    stated = _require(document, "plan_id", str, where)
    for key, kind in (("session", dict), ("privacy", dict), ("datasets", list), ("computations", list)):
        _require(document, key, kind, where)
    body = {k: v for k, v in document.items() if k != "plan_id"}
    if canonical_id(body) != stated:
        raise PlanError(f"{where}: content does not match its plan id {stated[:16]}... (edited or forged)")
    for i, d in enumerate(document["datasets"]):
        for key in ("site", "name", "content_hash", "role"):
            _require(d, key, str, f"{where}: datasets[{i}]")
    roles = set()
    for i, entry in enumerate(document["computations"]):
        role = _require(entry, "role", str, f"{where}: computations[{i}]")
        digest = _require(entry, "sha256", str, f"{where}: computations[{i}]")
        if role not in ROLES or role in roles:
            raise PlanError(f"{where}: computations[{i}]: role {role!r} is unknown or repeated")
        roles.add(role)
        try:
            raw = base64.b64decode(_require(entry, "proto", str, f"{where}: computations[{i}]"), validate=True)
            computation = computation_pb2.Computation.FromString(raw)
        except (binascii.Error, ValueError, Exception):
            raise PlanError(f"{where}: computation '{role}' does not decode") from None
        if computation_sha256(computation) != digest:
            raise PlanError(f"{where}: computation '{role}' does not match its sha256 {digest[:16]}... "
                            "(edited or forged)")
        if computation.type.WhichOneof("type") != "function":
            raise PlanError(f"{where}: computation '{role}' is not a function")
        if _clients_placed(computation.type.function.result):
            raise PlanError(f"{where}: computation '{role}' returns CLIENTS-placed values; a site releases "
                            "only aggregates")
        _check_terms(entry, raw, document["privacy"], where)
    if "train" not in roles and ("train" in {d["role"] for d in document["datasets"]} or len(roles) != 1
                                 or any(d["role"] not in roles for d in document["datasets"])):
        raise PlanError(f"{where}: has no 'train' computation (an evaluation or computation plan has one "
                        "'eval' or 'compute' computation and only datasets for it)")
    if "compute" in roles and len(roles) > 1:
        raise PlanError(f"{where}: a 'compute' computation is a plan of its own")
    return Plan(stated, document)


def _check_terms(entry: Mapping[str, Any], raw: bytes, privacy: Mapping[str, Any], where: str) -> None:
    """Refuse a computation whose release terms do not fit it, or a fixed-clip DP plan whose
    training computation is not bounded by the plan's clip."""
    from tffprod.protocol.terms import ReleaseTerms, TermsError

    try:
        terms = ReleaseTerms(entry, raw)
    except TermsError as e:
        raise PlanError(f"{where}: {e}") from None
    if entry["role"] == "train" and privacy.get("mechanism") == "gaussian_fixed":
        clip = privacy.get("clip")
        if terms.bound is None or terms.bound.l2_norm_per_client != clip:
            raise PlanError(f"{where}: the training computation of a DP plan must be bounded by its clip {clip}")
