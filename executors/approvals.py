"""Computation approval: a site runs only the computations its operator approved.

A coordinator freezes a session into a *plan* (``tffprod session plan``): a JSON
file with the session's settings, datasets, DP parameters and the compiled
computations that will run at sites, each as base64 ``Computation`` bytes with
its SHA-256. The plan's id is the SHA-256 of its canonical JSON (everything but
the id). Frozen computations go over the wire byte for byte as reviewed
(shared/design/tff-0.87-facts.md section 6), so the gateway can allow-list them
by hash.

A site operator reads the plan (``tffprod site plan show``) and approves it
(``tffprod site approve``). Approval re-derives every hash from the bytes (an
edited or forged plan does not match), checks the plan names this site and
only datasets of its catalog with their current content, and that no site
computation returns a CLIENTS-placed value (only aggregates may leave). The
approval is a small JSON record in ``STATE_DIR/approvals/`` that the running
gateway picks up without a restart.

TF-free: only ``json``, ``hashlib`` and TFF's generated protobuf modules.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Optional

from tffprod.errors import TffprodError

__all__ = ["PLAN_FORMAT", "Approval", "ApprovalStore", "Plan", "PlanError", "approve", "approve_at_site",
           "canonical_id", "computation_sha256", "load_plan"]

PLAN_FORMAT = "tffprod-plan/2"  # 2: each computation carries its release terms (tffprod.protocol.terms)
APPROVALS_DIR = "approvals"
ROLES = ("train", "eval", "compute")  # a training round, an evaluation, a custom computation


class PlanError(TffprodError):
    """A plan cannot be read, does not verify, or cannot be approved at this site."""

    exit_code = 10


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
        """A plan of one custom federated computation (:func:`tffprod.sessions.approval.make_computation_plan`)."""
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


@dataclasses.dataclass(frozen=True)
class Approval:
    """What a site approved: one plan's computations, its datasets at this site, rounds and DP terms."""

    plan_id: str
    site: str
    session: str
    approved_at: str
    rounds: int
    datasets: tuple[str, ...]  # catalog names at this site
    computations: Mapping[str, str]  # sha256 -> role
    privacy: Mapping[str, Any]
    coordinator: Optional[str] = None  # the only caller identity the plan runs for; None = any configured one
    per_client: tuple[str, ...] = ()  # datasets approved only client by client (user-level training)
    federation: Optional[str] = None  # the plan's federation: its calls must name it
    roles: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # role -> dataset names here
    terms: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # role -> release terms

    def dataset_refs(self) -> set[str]:
        """What the plan may name at this site: ``NAME`` (whole or per client) or ``NAME#`` (per client only)."""
        return {f"{name}#" if name in self.per_client else name for name in self.datasets}

    def allows(self, identity: Optional[str], federation: Optional[str] = None) -> bool:
        """Whether ``identity``, calling for ``federation``, may run this plan's computations."""
        return (self.coordinator is None or identity == self.coordinator) and federation == self.federation

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["datasets"] = list(self.datasets)
        data["computations"] = dict(self.computations)
        data["privacy"] = dict(self.privacy)
        data["per_client"] = list(self.per_client)
        data["roles"] = {role: list(names) for role, names in self.roles.items()}
        data["terms"] = {role: dict(terms) for role, terms in self.terms.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Approval":
        return cls(plan_id=data["plan_id"], site=data["site"], session=data["session"],
                   approved_at=data["approved_at"], rounds=int(data["rounds"]),
                   datasets=tuple(data["datasets"]), computations=dict(data["computations"]),
                   privacy=dict(data["privacy"]), coordinator=data.get("coordinator"),
                   per_client=tuple(data.get("per_client", ())), federation=data.get("federation"),
                   roles={role: tuple(names) for role, names in (data.get("roles") or {}).items()},
                   terms=dict(data.get("terms") or {}))

    def role_of(self, sha256: str) -> Optional[str]:
        return self.computations.get(sha256)


def approve(plan: Plan, *, site: str, catalog: Mapping[str, Any], state_dir: os.PathLike | str,
            coordinators: Optional[Any] = None, federations: Optional[Any] = None) -> Approval:
    """Approve ``plan`` at ``site`` (its ``catalog``: name -> ``CatalogEntry``) and record it.

    ``coordinators`` are the identities the site serves; a plan bound to another one is refused.
    ``federations`` (None: any) are the federations it serves; a plan of another one is refused.

    Raises:
        PlanError: the plan is for other sites or another coordinator, names a dataset the
            site does not serve, or a dataset whose content changed since the plan was made.
    """
    mine = [d for d in plan.datasets if d["site"] == site]
    if not mine:
        raise PlanError(f"plan {plan.plan_id[:16]} is for site(s) {', '.join(plan.sites)}, not {site}")
    coordinator = (plan.document.get("coordinators") or {}).get(site)
    if coordinator is not None and coordinators is not None and coordinator not in coordinators:
        raise PlanError(f"plan {plan.plan_id[:16]} is for coordinator '{coordinator}', which site {site} does not "
                        "serve")
    federation = plan.session.get("federation")
    if federations is not None and federation not in federations:
        raise PlanError(f"plan {plan.plan_id[:16]} is for federation '{federation or '-'}'; site {site} serves only "
                        f"{', '.join(sorted(federations))}")
    for d in mine:
        entry = catalog.get(d["name"])
        if entry is None:
            raise PlanError(f"plan {plan.plan_id[:16]} names dataset '{d['name']}', which site {site} does not serve")
        if entry.content_hash != d["content_hash"]:
            raise PlanError(f"plan {plan.plan_id[:16]}: dataset '{d['name']}' changed at site {site} since the "
                            "plan was made; make a new plan")
    approval = Approval(
        plan_id=plan.plan_id,
        site=site,
        session=str(plan.session.get("name", "")),
        approved_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        rounds=int(plan.session.get("rounds", 0)),
        datasets=tuple(sorted({d["name"] for d in mine})),
        computations={c["sha256"]: c["role"] for c in plan.computations},
        privacy=dict(plan.privacy),
        coordinator=coordinator,
        per_client=_per_client(mine),
        federation=federation,
        roles={role: tuple(sorted({d["name"] for d in mine if d["role"] == role})) for role in ROLES},
        terms={c["role"]: {k: v for k, v in c.items() if k != "proto"} for c in plan.computations},
    )
    folder = Path(state_dir) / APPROVALS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for entry in plan.computations:  # the bytes the site will run, stored before the approval shows
        _write_atomically(folder / computation_file(plan.plan_id, entry["role"]), base64.b64decode(entry["proto"]))
    target = folder / f"{plan.plan_id}.json"
    _write_atomically(target, (json.dumps(approval.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return approval


def computation_file(plan_id: str, role: str) -> str:
    """The file in ``STATE_DIR/approvals`` holding an approved plan's computation for ``role``."""
    return f"{plan_id}.{role}.computation"


def _write_atomically(target: Path, data: bytes) -> None:
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)


def _per_client(datasets: list[dict]) -> tuple[str, ...]:
    """Names trained client by client (a client-id column) and never read whole (e.g. for evaluation)."""
    whole = {d["name"] for d in datasets if d["role"] != "train" or not d.get("client_id")}
    return tuple(sorted({d["name"] for d in datasets if d["role"] == "train" and d.get("client_id")} - whole))


class ApprovalStore:
    """The approvals in ``STATE_DIR/approvals``, re-read when the folder changes."""

    def __init__(self, state_dir: os.PathLike | str) -> None:
        self.folder = Path(state_dir) / APPROVALS_DIR
        self._lock = threading.Lock()
        self._stamp: Optional[tuple] = None
        self._approvals: list[Approval] = []
        self._terms: dict[tuple[str, str], Any] = {}

    def _refresh(self) -> None:
        try:
            entries = sorted(p for p in self.folder.glob("*.json") if not p.name.startswith("."))
            stamp = tuple((p.name, p.stat().st_mtime_ns) for p in entries)
        except OSError:
            entries, stamp = [], ()
        if stamp == self._stamp:
            return
        approvals = []
        for path in entries:
            try:
                approvals.append(Approval.from_dict(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged record approves nothing
        self._approvals = sorted(approvals, key=lambda a: (a.approved_at, a.plan_id))
        self._stamp = stamp

    def all(self) -> list[Approval]:
        """Every approval, oldest first."""
        with self._lock:
            self._refresh()
            return list(self._approvals)

    def for_computation(self, sha256: str, identity: Optional[str] = None,
                        federation: Optional[str] = None) -> list[Approval]:
        """The approvals that include the computation with this hash (and let ``identity``,
        calling for ``federation``, run it, when ``identity`` is given), oldest first."""
        return [a for a in self.all() if sha256 in a.computations
                and (identity is None or a.allows(identity, federation))]

    def get(self, plan_id: str) -> Optional[Approval]:
        """The approval of ``plan_id``, or None."""
        return next((a for a in self.all() if a.plan_id == plan_id), None)

    def terms(self, approval: Approval, role: str) -> Any:
        """The :class:`tffprod.protocol.terms.ReleaseTerms` of ``approval``'s computation for ``role``,
        from the bytes stored at approval (checked against the approved hash); None if it has none.

        Raises:
            PlanError: the stored computation is missing or does not match its approved hash.
        """
        from tffprod.protocol.terms import ReleaseTerms, TermsError

        entry = approval.terms.get(role)
        if entry is None:
            return None
        key = (approval.plan_id, role)
        with self._lock:
            cached = self._terms.get(key)
        if cached is not None:
            return cached
        try:
            data = (self.folder / computation_file(approval.plan_id, role)).read_bytes()
        except OSError:
            raise PlanError(f"plan {approval.plan_id[:16]}: its approved {role} computation is missing; "
                            "approve the plan again") from None
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise PlanError(f"plan {approval.plan_id[:16]}: its stored {role} computation does not match the "
                            "approved hash; approve the plan again")
        try:
            terms = ReleaseTerms(entry, data)
        except TermsError as e:
            raise PlanError(f"plan {approval.plan_id[:16]}: {e}") from None
        with self._lock:
            self._terms[key] = terms
        return terms

    def datasets(self) -> frozenset[str]:
        """What approved plans may name: ``NAME``, or ``NAME#`` for per-client only (``DataRefs`` ``allowed``)."""
        refs = set().union(*(a.dataset_refs() for a in self.all()))
        return frozenset(r for r in refs if not (r.endswith("#") and r[:-1] in refs))


def approve_at_site(plan_path: os.PathLike | str, config: Any) -> Approval:
    """``tffprod site approve``: verify the plan file, approve it for the site ``config``
    (a :class:`tffprod.executors.config.SiteConfig`) and record the approval in its audit log.

    Raises:
        PlanError: the plan does not verify or is not for this site and its data.
        DatasetError: a catalog file is missing or corrupt.
    """
    from tffprod.executors.audit import AuditLog
    from tffprod.executors.serve import AUDIT_FILE

    with AuditLog(Path(config.state_dir) / AUDIT_FILE) as audit:
        try:
            plan = load_plan(plan_path)
            approval = approve(plan, site=config.name, catalog=config.build_catalog(), state_dir=config.state_dir,
                               coordinators=set(config.coordinators), federations=config.federations)
        except TffprodError as refused:  # a refused approval is audited too
            audit.record(identity="operator", method="approve", bytes_in=0, bytes_out=0, status="REFUSED",
                         duration_s=0.0, detail=str(refused), plan_file=str(plan_path))
            raise
        audit.record(identity="operator", method="approve", bytes_in=0, bytes_out=0, status="OK", duration_s=0.0,
                     plan=approval.plan_id, computations=dict(approval.computations), datasets=list(approval.datasets),
                     coordinator=approval.coordinator)
    return approval
