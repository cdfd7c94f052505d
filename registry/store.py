"""``Registry``: the public face of the registry store.

Each method is one call into the concept modules (``datasets``, ``sessions``,
``privacy``, ``models``) run inside ``translate_errors``, so a caller only ever sees
``tffprod`` errors. Rows come back as plain dicts with JSON columns decoded.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from tffprod.registry import audit, datasets, federations, models, privacy, sessions
from tffprod.registry.connection import connect, translate_errors, write_transaction
from tffprod.registry.protocol import DatasetRow, ModelVersionRow, RegistryStore, RoundRow, SessionRow, SiteRow

if TYPE_CHECKING:
    from sqlite_utils import Database

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _translated(method: _Method) -> _Method:
    """Runs a ``Registry`` method inside ``translate_errors`` for its path."""

    @functools.wraps(method)
    def wrapper(self: Registry, *args: Any, **kwargs: Any) -> Any:
        with translate_errors(self.path):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Registry:
    """Sites, datasets, privacy budgets, sessions, rounds, model versions and evaluations in SQLite.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    One instance serves one thread.

    Example:
        with Registry.open("tffprod.db") as registry:
            registry.add_site("hospital-a", address="hospital-a.example:8443")
    """

    def __init__(self, db: Database, path: str) -> None:
        """Wraps an already open, migrated database; use :meth:`open` instead."""
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Registry:
        """Opens a registry file, creating it and applying pending migrations.

        Args:
            path: A file path (its directory must exist) or ``":memory:"``.

        Returns:
            The open registry.

        Raises:
            RegistryError: if the file cannot be opened or created, is not a
                registry (corrupt), is locked, or was written by a newer tffprod.
        """
        text = os.fspath(path)
        resolved = text if text == ":memory:" else os.path.abspath(text)
        with translate_errors(resolved):
            return cls(connect(resolved), resolved)

    @_translated
    def close(self) -> None:
        """Closes the database connection."""
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.path!r})"

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Runs the block's registry writes in one transaction: all of them land, or none.

        Use it to keep a change and its audit entry together::

            with registry.atomic():
                registry.create_federation("hospitals")
                registry.record_action("federation.create", "hospitals")

        The block holds the registry's write lock: do slow work (hashing files,
        calling sites) before it, not inside.

        Raises:
            RegistryError: for any database problem; the block's writes are undone.
        """
        with translate_errors(self.path), write_transaction(self._db):
            yield

    # Sites and datasets.

    @_translated
    def add_site(self, name: str, *, address: str | None = None, info: dict | None = None) -> SiteRow:
        """Adds a site or updates it; arguments left as None keep their stored values.

        Raises:
            SpecError: if ``name`` is not a valid name.
        """
        return datasets.add_site(self._db, name, address, info)

    @_translated
    def get_site(self, name: str) -> SiteRow:
        """Returns a site: name, address, info, created_at, updated_at.

        Raises:
            NotFoundError: if the site is unknown.
        """
        return datasets.get_site(self._db, name)

    @_translated
    def list_sites(self) -> list[SiteRow]:
        """Returns every site, sorted by name."""
        return datasets.list_sites(self._db)

    # -- federations -------------------------------------------------------------------------

    @_translated
    def create_federation(self, name: str) -> dict:
        """Creates federation ``name`` (an existing one is returned): ``{"name", "created_at", "sites"}``."""
        return federations.create(self._db, name)

    @_translated
    def get_federation(self, name: str) -> dict:
        """Returns federation ``name`` with its sites; NotFoundError if unknown."""
        return federations.get(self._db, name)

    @_translated
    def list_federations(self) -> list[dict]:
        """Returns every federation with its sites, by name."""
        return federations.list_all(self._db)

    @_translated
    def add_federation_site(self, name: str, site: str) -> dict:
        """Adds registered ``site`` to federation ``name``; NotFoundError if either is unknown."""
        return federations.add_site(self._db, name, site)

    @_translated
    def remove_federation_site(self, name: str, site: str) -> dict:
        """Removes ``site`` from federation ``name``; NotFoundError if it is not a member."""
        return federations.remove_site(self._db, name, site)

    @_translated
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
    ) -> DatasetRow:
        """Registers a dataset of a site (adding the site if missing).

        ``client_id`` names the column whose values say which client (customer,
        patient) a row belongs to, and ``num_clients`` counts them; without it
        the dataset is one client (site-level).

        If the latest version has the same content hash, schema and path it is
        returned unchanged; otherwise version ``latest + 1`` (from 1) is added.

        Returns:
            The version: ref (``"site/name:version"``), site, name, version,
            path, format, schema, num_examples, content_hash, registered_at.

        Raises:
            SpecError: if ``site`` or ``name`` is not a valid name.
        """
        return datasets.add_dataset(
            self._db,
            site=site,
            name=name,
            path=path,
            format=format,
            schema=schema,
            num_examples=num_examples,
            content_hash=content_hash,
            client_id=client_id,
            num_clients=num_clients,
        )

    @_translated
    def dataset_versions(self, ref: str) -> list[dict]:
        """Every version of ``"SITE/NAME"`` (oldest first), each with the sessions (``{"id", "status"}``)
        that trained on it. A changed content hash is a new version.

        Raises:
            NotFoundError: if the dataset is unknown.
        """
        return datasets.list_versions(self._db, ref)

    @_translated
    def get_dataset(self, ref: str) -> DatasetRow:
        """Returns ``"SITE/NAME:VERSION"``, or the latest version for ``"SITE/NAME"``.

        Raises:
            NotFoundError: if no such dataset version exists, or ``ref`` is malformed.
        """
        return datasets.get_dataset(self._db, ref)

    @_translated
    def list_datasets(self, site: str | None = None) -> list[DatasetRow]:
        """Returns the latest version of every dataset (of ``site`` if given), sorted by ref."""
        return datasets.list_datasets(self._db, site)

    # Sessions and rounds.

    @_translated
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
    ) -> SessionRow:
        """Records a new ``pending`` session with a fresh id like ``s-20261125-183000-ab12``.

        ``privacy`` describes the session's DP accounting (unit of privacy, sampling).

        Returns:
            The session, as :meth:`get_session` returns it.
        """
        return sessions.create_session(
            self._db,
            name=name,
            spec=spec,
            task=task,
            backend=backend,
            rounds_planned=rounds_planned,
            datasets=datasets,
            privacy=privacy,
        )

    @_translated
    def start_session(self, session_id: str, *, coordinator: dict | None = None) -> SessionRow:
        """Sets a session ``running``, stamps ``started_at`` and records ``coordinator``
        (``{"host", "pid"}`` of the process running it).

        Raises:
            NotFoundError: if the session is unknown.
        """
        return sessions.start_session(self._db, session_id, coordinator)

    @_translated
    def claim_session(self, session_id: str, *, coordinator: dict, expected: dict | None) -> SessionRow:
        """Sets a session being resumed ``running`` under ``coordinator``; bumps ``resumed``.

        ``expected`` is the owner the caller saw (and found dead); if a running session
        has another owner by now, someone else resumed it first.

        Raises:
            NotFoundError: if the session is unknown.
            RegistryError: if it is finished, or another coordinator claimed it meanwhile.
        """
        return sessions.claim_session(self._db, session_id, coordinator, expected)

    @_translated
    def request_cancel(self, session_id: str) -> SessionRow:
        """Stamps ``cancel_requested_at``; the coordinator stops at its next round boundary.

        Raises:
            NotFoundError: if the session is unknown.
            RegistryError: if it is not pending or running.
        """
        return sessions.request_cancel(self._db, session_id)

    @_translated
    def finish_session(self, session_id: str, *, status: str, error: str | None = None) -> SessionRow:
        """Ends a session: ``finished``, ``failed`` or ``cancelled``; stamps ``finished_at``.

        Raises:
            NotFoundError: if the session is unknown.
            ValueError: if ``status`` is not a final status.
        """
        return sessions.finish_session(self._db, session_id, status, error)

    @_translated
    def get_session(self, session_id: str) -> SessionRow:
        """Returns a session.

        Returns:
            id, name, status, backend, spec, task, datasets, rounds_planned,
            rounds_completed, created_at, started_at, finished_at, error and
            duration_s (None until the session has both started and finished).

        Raises:
            NotFoundError: if the session is unknown.
        """
        return sessions.get_session(self._db, session_id)

    @_translated
    def list_sessions(self, *, status: str | None = None) -> list[SessionRow]:
        """Returns sessions (only those with ``status`` if given), newest first."""
        return sessions.list_sessions(self._db, status)

    @_translated
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
    ) -> RoundRow:
        """Records a finished round, its privacy spend and the session's ``rounds_completed``, atomically.

        The round row, every ``spend`` item and the progress counter are
        written in one transaction: a failure leaves none of them changed.

        Args:
            session_id: The session.
            round_num: The round, from 1.
            metrics: The round's aggregated metrics.
            participants: One ``{"site", "status" ("ok" | "timeout" | "error"),
                "duration_s", "examples", "error"}`` dict per selected site.
            duration_s: Wall time of the round.
            epsilon: Privacy spent so far, if DP is on.
            spend: Optional; one ``{"site", "name", "epsilon", "delta",
                "rounds"}`` dict per dataset identity this session has used:
                the session's *cumulative* spend on it so far and the number
                of rounds it took part in. Each replaces the session's
                previous value for that dataset (see :meth:`privacy_report`).
            sampling_rate: Optional; a client's chance to take part in this round.
            clients: Optional; how many clients really took part.
            epsilon_pld: Optional; privacy spent so far by the PLD accountant.
            checkpoint: Optional; the server-state file after this round, already on disk.
            checkpoint_sha256: Its SHA-256; resume loads the file only if it matches.

        Returns:
            The round: session_id, round_num, metrics, participants,
            duration_s, epsilon, recorded_at.

        Raises:
            NotFoundError: if the session is unknown.
            RegistryError: if this round was already recorded, or is not the one after the
                last recorded round (nothing changes).
            ValueError: if ``round_num`` < 1, a participant status is unknown,
                or a spend item is malformed (missing or extra keys, negative
                values, a dataset listed twice); nothing is written.
        """
        return sessions.record_round(
            self._db,
            session_id,
            round_num=round_num,
            metrics=metrics,
            participants=participants,
            duration_s=duration_s,
            epsilon=epsilon,
            spend=spend,
            sampling_rate=sampling_rate,
            clients=clients,
            epsilon_pld=epsilon_pld,
            checkpoint=checkpoint,
            checkpoint_sha256=checkpoint_sha256,
        )

    @_translated
    def list_rounds(self, session_id: str) -> list[RoundRow]:
        """Returns a session's rounds by round number.

        Raises:
            NotFoundError: if the session is unknown.
        """
        return sessions.list_rounds(self._db, session_id)

    # Privacy budgets and spend.

    @_translated
    def set_budget(self, site: str, name: str, *, epsilon: float, delta: float, source: str) -> dict:
        """Sets the privacy budget of dataset identity ``site/name`` (every version), replacing any.

        The registry stores budgets; it does not decide who may set one. Callers
        keep a site's own budget (``source="site"``) ahead of a coordinator's.

        Args:
            site: The site.
            name: The dataset's name (no version: a new version shares the budget).
            epsilon: Total epsilon allowed, > 0.
            delta: Total delta allowed, 0 < delta < 1.
            source: ``"site"`` (from the site's config) or ``"coordinator"``.

        Returns:
            The budget: site, name, epsilon, delta, source, updated_at.

        Raises:
            SpecError: if ``site`` or ``name`` is not a valid name.
            ValueError: if a value is out of range or ``source`` is unknown.
        """
        return privacy.set_budget(self._db, site, name, epsilon=epsilon, delta=delta, source=source)

    @_translated
    def get_budget(self, site: str, name: str) -> dict | None:
        """Returns the budget of ``site/name`` (as :meth:`set_budget` does), or None if it has none."""
        return privacy.get_budget(self._db, site, name)

    @_translated
    def privacy_report(self, *, site: str | None = None, name: str | None = None) -> list[dict]:
        """Budget, spend and remainder of every dataset identity with a budget or any spend.

        Sessions compose by basic composition: a dataset's spent epsilon is the
        sum of every session's epsilon on it, and likewise for delta (each
        session's value being its cumulative spend, as last recorded by
        :meth:`record_round`). This upper bound never understates the spend.

        Args:
            site: Only datasets of this site.
            name: Only datasets with this name.

        Returns:
            One dict per dataset identity, sorted by ``dataset``:
            ``{"dataset": "site/name", "budget": {"epsilon", "delta", "source"}
            | None, "spent": {"epsilon", "delta"}, "remaining": {"epsilon",
            "delta"} | None, "sessions": [{"session_id", "epsilon", "delta",
            "rounds", "status"}], "evaluations": [{"session_id", "plan_id",
            "epsilon", "delta", "releases", "noise_multiplier", "status"}]}``; ``spent``
            counts training and evaluation (and has ``evaluation_epsilon``,
            their part, when there are evaluations); ``remaining`` is budget
            minus spent (it goes negative when overspent) and None without a
            budget; sessions and evaluations are oldest first. An unknown site
            or name gives ``[]``.
        """
        return privacy.privacy_report(self._db, site, name)

    @_translated
    def record_evaluation_spend(self, spend: list[dict], *, session_id: str | None = None,
                                plan_id: str | None = None) -> list[dict]:
        """Charges noised evaluation releases to each evaluation dataset they read: a session's, or an
        evaluation plan's (``tffprod eval --plan``); exactly one of ``session_id`` and ``plan_id``.

        Args:
            spend: one ``{"site", "name", "epsilon", "delta", "releases", "noise_multiplier"}`` per dataset;
                a later call for the same session (or plan) and dataset replaces its row.

        Raises:
            NotFoundError: unknown session.
            ValueError: an item is malformed (nothing is written).
        """
        return privacy.record_evaluation_spend(self._db, spend, session_id=session_id, plan_id=plan_id)

    # Model versions and evaluations.

    @_translated
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
    ) -> ModelVersionRow:
        """Adds the next version (from 1) of model ``name``, with its lineage.

        Args:
            lineage: The full lineage (``tffprod.models.lineage.build_lineage``); sessions always give one.
            access: Principals (``site:NAME``, ``federation:NAME``) allowed to receive the
                version; default: the sites of ``datasets`` and the session's federation, if any.
            evaluations: Recorded with the version, as :meth:`add_evaluation` takes them
                (``dataset``, ``metrics`` and optionally ``kind``).
            finishes_session: Also mark the session ``finished``, in the same transaction, so a
                crash leaves either both or neither; refused if the session already has a version.

        Returns:
            name, version, session_id, artifact_path, metrics, dp, epsilon,
            delta, datasets, task, created_at, lineage, access, aliases.

        Raises:
            NotFoundError: if the session is unknown.
            SpecError: if ``name`` is not a valid name.
            RegistryError: ``finishes_session`` for a session that already has a version.
        """
        return models.add_model_version(
            self._db,
            name=name,
            session_id=session_id,
            artifact_path=artifact_path,
            metrics=metrics,
            dp=dp,
            epsilon=epsilon,
            delta=delta,
            datasets=datasets,
            task=task,
            lineage=lineage,
            access=access,
            evaluations=evaluations,
            finishes_session=finishes_session,
        )

    @_translated
    def get_model_version(self, ref: str) -> ModelVersionRow:
        """Returns ``"NAME:VERSION"`` or ``"NAME@ALIAS"``, or the latest version for ``"NAME"``.

        Raises:
            NotFoundError: if no such version or alias exists, or ``ref`` is malformed.
        """
        return models.get_model_version(self._db, ref)

    @_translated
    def list_model_versions(self, name: str | None = None) -> list[ModelVersionRow]:
        """Returns all versions (of model ``name`` if given), by name then version."""
        return models.list_model_versions(self._db, name)

    @_translated
    def add_evaluation(
        self,
        *,
        model: str,
        version: int,
        dataset: str,
        metrics: dict,
        session_id: str | None = None,
        kind: str = "dataset",
    ) -> dict:
        """Records the metrics of model version ``model:version`` on ``dataset``.

        ``kind="overall"`` records metrics merged over several datasets; ``dataset``
        then lists their refs, comma-separated.

        Returns:
            id, model, version, dataset, metrics, session_id, created_at, kind.

        Raises:
            NotFoundError: if the model version or the session is unknown.
        """
        return models.add_evaluation(
            self._db, model=model, version=version, dataset=dataset, metrics=metrics, session_id=session_id,
            kind=kind,
        )

    @_translated
    def list_evaluations(self, model: str, version: int | None = None, *, kind: str | None = "dataset") -> list[dict]:
        """Returns the evaluations of a model (or one version of it), oldest first.

        ``kind``: ``"dataset"`` (the default: one row per dataset), ``"overall"`` (merged over
        several datasets, listed comma-separated in ``dataset``), or None for both.

        Raises:
            NotFoundError: if the model (or that version) is unknown.
        """
        return models.list_evaluations(self._db, model, version, kind)

    @_translated
    def set_model_alias(self, ref: str, alias: str) -> ModelVersionRow:
        """Points ``alias`` at the version ``ref`` names (moving it from another version of the model).

        Returns:
            The version, as :meth:`get_model_version` returns it.

        Raises:
            NotFoundError: if the version is unknown.
            SpecError: if ``alias`` is not a valid name, or is all digits.
        """
        return models.set_alias(self._db, ref, alias)

    @_translated
    def remove_model_alias(self, name: str, alias: str) -> ModelVersionRow:
        """Removes ``alias`` of model ``name``; returns the version it named.

        Raises:
            NotFoundError: if the model has no such alias.
        """
        return models.remove_alias(self._db, name, alias)

    @_translated
    def list_model_aliases(self, name: str | None = None) -> dict:
        """Returns ``{model: {alias: version}}`` (of model ``name`` if given)."""
        return models.list_aliases(self._db, name)

    @_translated
    def set_model_access(self, ref: str, *, allow: Sequence[str] = (),
                         revoke: Sequence[str] = ()) -> ModelVersionRow:
        """Adds ``allow`` to and removes ``revoke`` from the principals that may receive a version.

        Principals are ``site:NAME`` or ``federation:NAME``.

        Raises:
            NotFoundError: if the version is unknown.
            SpecError: if a principal is malformed.
        """
        return models.set_access(self._db, ref, list(allow), list(revoke))

    @_translated
    def site_may_receive(self, version: Mapping[str, Any], site: str) -> bool:
        """Whether ``site`` is on ``version``'s access list, itself or through a listed federation."""
        return models.site_allowed(self._db, version["access"], site)

    # The audit log of operator actions.

    @_translated
    def record_action(self, action: str, subject: str, details: dict | None = None, *,
                      actor: str | None = None) -> dict:
        """Appends an operator action to the hash-chained audit log (and moves its head), atomically.

        Args:
            action: What was done, as ``"area.verb"``: ``"dataset.register"``,
                ``"session.run"``, ``"model.alias"``, ``"model.access"``, ...
            subject: What it was done to: a dataset ref, session id, ``"NAME:VERSION"``, ...
            details: Optional; a JSON-able dict of the parameters that matter.
                Never put secrets in it: the log is for reading.
            actor: Who did it; default the OS user running this process.

        Returns:
            The entry: seq, at, actor, action, subject, details, prev_hash, hash.

        Raises:
            ValueError: if ``action`` is empty, ``subject`` not a string or ``details`` not a dict.
            TypeError: if ``details`` holds something JSON cannot represent.
        """
        return audit.append(self._db, action, subject, details, actor=actor)

    @_translated
    def list_audit(self, *, limit: int | None = None, action: str | None = None) -> list[dict]:
        """Returns audit entries newest first (only ``action`` if given, at most ``limit``), as
        :meth:`record_action` returns them."""
        return audit.list_entries(self._db, limit, action)

    @_translated
    def verify_audit(self, *, expect_head: str | None = None) -> dict:
        """Walks the audit chain from its first entry and checks every hash, link and the head.

        Args:
            expect_head: Optional; a head hash noted earlier (elsewhere): it must
                still be an entry of the chain.

        Returns:
            ``{"ok": True, "entries": N, "head": {"seq", "hash"} | None, "problem": None}``.

        Raises:
            AuditError: at the first problem, naming the entry (``report["problem"]``
                has ``kind``: ``"edited"``, ``"deleted"``, ``"inserted"``,
                ``"unlinked"``, ``"head"`` or ``"expected-head"``, ``seq`` and ``message``).
        """
        return audit.verify(self._db, expect_head)


if TYPE_CHECKING:

    def _registry_is_a_store(registry: Registry) -> RegistryStore:
        """Never called, never defined at run time: mypy checks here, structurally, that ``Registry``
        has every member of ``RegistryStore`` with a compatible signature (``RegistryStore`` lists
        what the library calls; ``tests/unit/test_registry_protocol.py`` checks the same at run time)."""
        return registry
