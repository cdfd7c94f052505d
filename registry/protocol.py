"""``RegistryStore``: what tffprod's library needs of a registry, and the rows it reads.

Library code (``tffprod.sessions``, ``tffprod.models``, ``tffprod.sites``, ...) takes a
``registry: RegistryStore``; only the CLI, which opens the file, names the SQLite
implementation, :class:`tffprod.registry.Registry`. A central store (PostgreSQL) can
stand behind the same interface.

The Protocol lists the members of ``Registry`` the library calls, with ``Registry``'s
signatures. ``Registry`` does not inherit from it: mypy checks the match structurally
(``tffprod.registry.store`` ends with a function that returns a ``Registry`` as a
``RegistryStore``), and ``tests/unit/test_registry_protocol.py`` checks at run time that
every member exists on ``Registry`` with the same parameters.

The ``*Row`` TypedDicts describe the rows the library reads most. They are plain dicts at
run time (JSON columns decoded). Every key is present in every row a store returns
(columns that later migrations added exist in every migrated registry, NULL read as
None), so the TypedDicts are total: what may be missing is a value (``X | None``), not a
key. Only these few rows are typed; the others stay ``dict[str, Any]``.

TF-free and SQLite-free: this module imports only typing helpers of the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypedDict, runtime_checkable

__all__ = ["DatasetRow", "ModelVersionRow", "RegistryStore", "RoundRow", "SessionRow", "SiteRow"]


class SiteRow(TypedDict):
    """A site, as ``get_site`` / ``add_site`` / ``list_sites`` return it."""

    name: str
    address: str | None  # None for a site known only by its datasets (local backend)
    info: dict[str, Any]  # the coordinator's TLS files and token for it, the site's versions
    created_at: str
    updated_at: str


class DatasetRow(TypedDict):
    """One version of a dataset, as ``get_dataset`` / ``add_dataset`` return it."""

    ref: str  # "SITE/NAME:VERSION"
    site: str
    name: str
    version: int
    path: str  # a local file, or "site://SITE/NAME" for data that stays at its site
    format: str  # "csv" | "tfrecord"
    schema: dict[str, Any]
    num_examples: int
    content_hash: str
    registered_at: str
    client_id: str | None  # the client-id column; None: one client (site-level)
    num_clients: int  # 1 when site-level


class SessionRow(TypedDict):
    """A session, as ``get_session`` and the other session methods return it."""

    id: str
    name: str
    status: str  # "pending" | "running" | "finished" | "failed" | "cancelled"
    backend: str
    spec: dict[str, Any]
    task: dict[str, Any]
    datasets: list[str]  # dataset version refs
    rounds_planned: int
    rounds_completed: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    privacy: dict[str, Any] | None  # unit of privacy, sampling, accountants
    coordinator: dict[str, Any] | None  # {"host", "pid"} of the process running it
    cancel_requested_at: str | None
    resumed: int
    duration_s: float | None  # None until the session has both started and finished


class RoundRow(TypedDict):
    """A committed round, as ``record_round`` / ``list_rounds`` return it."""

    session_id: str
    round_num: int
    metrics: dict[str, Any]
    participants: list[dict[str, Any]]  # {"site", "status", "duration_s", "examples", "error", ...} per site
    duration_s: float
    epsilon: float | None
    recorded_at: str
    sampling_rate: float | None
    clients: int | None
    epsilon_pld: float | None
    checkpoint: str | None  # the server-state file after this round
    checkpoint_sha256: str | None


class ModelVersionRow(TypedDict):
    """A model version, as ``get_model_version`` and the other version methods return it."""

    name: str
    version: int
    session_id: str
    artifact_path: str
    metrics: dict[str, Any]
    dp: dict[str, Any]
    epsilon: float | None
    delta: float | None
    datasets: list[str]
    task: dict[str, Any]
    created_at: str
    lineage: dict[str, Any]  # {} for versions made before lineage was recorded
    access: list[str]  # principals: "site:NAME", "federation:NAME"
    aliases: list[str]


@runtime_checkable
class RegistryStore(Protocol):
    """The registry as the library uses it; see :class:`tffprod.registry.Registry` for each member.

    Every method raises only ``tffprod`` errors (``NotFoundError``, ``RegistryError``,
    ``SpecError``, ...), as ``Registry``'s do.
    """

    @property
    def path(self) -> str:
        """Where the registry is (artifacts default to a directory beside it)."""
        ...

    def atomic(self) -> AbstractContextManager[None]:
        """A block whose registry writes all land, or none."""
        ...

    # Sites, federations and datasets.

    def add_site(self, name: str, *, address: str | None = None, info: dict | None = None) -> SiteRow: ...

    def get_site(self, name: str) -> SiteRow: ...

    def list_sites(self) -> list[SiteRow]: ...

    def get_federation(self, name: str) -> dict: ...

    def add_dataset(
        self,
        *,
        site: str,
        name: str,
        path: str,
        format: str,
        schema: dict,
        num_examples: int,
        content_hash: str,
        client_id: str | None = None,
        num_clients: int | None = None,
    ) -> DatasetRow: ...

    def get_dataset(self, ref: str) -> DatasetRow: ...

    # Sessions and rounds.

    def create_session(
        self,
        *,
        name: str,
        spec: dict,
        task: dict,
        backend: str,
        rounds_planned: int,
        datasets: list[str],
        privacy: dict | None = None,
    ) -> SessionRow: ...

    def start_session(self, session_id: str, *, coordinator: dict | None = None) -> SessionRow: ...

    def claim_session(self, session_id: str, *, coordinator: dict, expected: dict | None) -> SessionRow: ...

    def request_cancel(self, session_id: str) -> SessionRow: ...

    def finish_session(self, session_id: str, *, status: str, error: str | None = None) -> SessionRow: ...

    def get_session(self, session_id: str) -> SessionRow: ...

    def list_sessions(self, *, status: str | None = None) -> list[SessionRow]: ...

    def record_round(
        self,
        session_id: str,
        *,
        round_num: int,
        metrics: dict,
        participants: list[dict],
        duration_s: float,
        epsilon: float | None,
        spend: list[dict] | None = None,
        sampling_rate: float | None = None,
        clients: int | None = None,
        epsilon_pld: float | None = None,
        checkpoint: str | None = None,
        checkpoint_sha256: str | None = None,
    ) -> RoundRow: ...

    def list_rounds(self, session_id: str) -> list[RoundRow]: ...

    # Privacy budgets and spend.

    def set_budget(self, site: str, name: str, *, epsilon: float, delta: float, source: str) -> dict: ...

    def get_budget(self, site: str, name: str) -> dict | None: ...

    def privacy_report(self, *, site: str | None = None, name: str | None = None) -> list[dict]: ...

    def record_evaluation_spend(self, spend: list[dict], *, session_id: str | None = None,
                                plan_id: str | None = None) -> list[dict]: ...

    # Model versions and evaluations.

    def add_model_version(
        self,
        *,
        name: str,
        session_id: str,
        artifact_path: str,
        metrics: dict,
        dp: dict,
        epsilon: float | None,
        delta: float | None,
        datasets: list[str],
        task: dict,
        lineage: dict | None = None,
        access: list[str] | None = None,
        evaluations: list[dict] | None = None,
        finishes_session: bool = False,
    ) -> ModelVersionRow: ...

    def get_model_version(self, ref: str) -> ModelVersionRow: ...

    def list_model_versions(self, name: str | None = None) -> list[ModelVersionRow]: ...

    def add_evaluation(
        self,
        *,
        model: str,
        version: int,
        dataset: str,
        metrics: dict,
        session_id: str | None = None,
        kind: str = "dataset",
    ) -> dict: ...

    def list_evaluations(self, model: str, version: int | None = None, *,
                         kind: str | None = "dataset") -> list[dict]: ...

    def set_model_alias(self, ref: str, alias: str) -> ModelVersionRow: ...

    def remove_model_alias(self, name: str, alias: str) -> ModelVersionRow: ...

    def set_model_access(self, ref: str, *, allow: Sequence[str] = (), revoke: Sequence[str] = ()) -> ModelVersionRow:
        ...

    def site_may_receive(self, version: Mapping[str, Any], site: str) -> bool: ...

    # The audit log of operator actions.

    def record_action(self, action: str, subject: str, details: dict | None = None, *,
                      actor: str | None = None) -> dict: ...
