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
import dataclasses
import datetime
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Optional

from tffprod.errors import PlanError, TffprodError
from tffprod.executors.audit import AUDIT_FILE, AuditLog
from tffprod.privacy.placement import AT_SITES, PLACEMENTS
from tffprod.protocol.plan_document import ROLES, Plan, load_plan

__all__ = ["Approval", "ApprovalStore", "approve", "approve_at_site"]

APPROVALS_DIR = "approvals"


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
    _check_noise(plan)
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


def _check_noise(plan: Plan) -> None:
    """Refuse a plan whose noise placement the site cannot carry out as stated: an unknown one, or
    noise at the sites without a fixed clip the site checks, or split over more sites than train."""
    privacy = plan.privacy
    placement = privacy.get("noise_placement", "coordinator")
    if placement not in PLACEMENTS:
        raise PlanError(f"plan {plan.plan_id[:16]}: unknown noise placement {str(placement)[:32]!r} "
                        f"(this site knows {', '.join(PLACEMENTS)})")
    if placement not in AT_SITES:
        return
    bound = next((c.get("bound") for c in plan.computations if c["role"] == "train"), None)
    clip = privacy.get("clip")
    if not isinstance(bound, Mapping) or bound.get("l2_norm_per_client") != clip:
        raise PlanError(f"plan {plan.plan_id[:16]} puts the noise at the sites, but its training release is not "
                        "bounded by the plan's clip")
    sites = {d["site"] for d in plan.datasets if d["role"] == "train"}
    shares = privacy.get("noise_sites")
    if isinstance(shares, bool) or not isinstance(shares, int) or not 1 <= shares <= len(sites):
        raise PlanError(f"plan {plan.plan_id[:16]}: its noise is split over {shares!r} site(s); it needs a whole "
                        f"number from 1 to its {len(sites)} training site(s)")
    if "secure_aggregation" in privacy:
        _check_secure_aggregation(plan, sites)


def _check_secure_aggregation(plan: Plan, sites: set[str]) -> None:
    """Refuse secure-aggregation terms this site would not carry out as stated: other sites than the
    plan's, another modulus or quantization than this version's, or an effective noise multiplier
    that does not follow from the plan's noise and its computation."""
    from tffprod.privacy.secagg import SecAggError
    from tffprod.privacy.secagg.settings import BITS, FIXED_SCALE, LEVELS, layout_of, round_settings
    from tffprod.protocol.terms import ReleaseTerms, TermsError

    where = f"plan {plan.plan_id[:16]}"
    secure = plan.privacy["secure_aggregation"]
    if not isinstance(secure, Mapping) or plan.privacy.get("noise_placement") != "distributed":
        raise PlanError(f"{where}: secure aggregation needs the noise distributed over the sites")
    if sorted(secure.get("sites") or ()) != sorted(sites) or \
            (secure.get("bits"), secure.get("levels"), secure.get("fixed_scale")) != (BITS, LEVELS, FIXED_SCALE):
        raise PlanError(f"{where}: its secure aggregation is over other sites than its training sites, or uses a "
                        "modulus or quantization this site does not know")
    entry = next(c for c in plan.computations if c["role"] == "train")
    try:
        terms = ReleaseTerms(entry, plan.computation_bytes("train") or b"")
        settings = round_settings(plan.privacy, sorted(sites), layout_of(terms.result_slots()))
    except (TermsError, SecAggError) as e:
        raise PlanError(f"{where}: {e}") from None
    stated = secure.get("noise_multiplier")
    if not isinstance(stated, float) or abs(stated - settings.noise_multiplier) > 1e-9 * settings.noise_multiplier:
        raise PlanError(f"{where}: its secure aggregation states noise multiplier {stated!r}; its noise and "
                        f"computation give {settings.noise_multiplier:.12g}")


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
