"""Plan and run a training session: the round loop.

``plan_session`` checks everything it can before anything is written (task,
datasets, schemas, files, DP settings), so bad input leaves the registry as it
was. ``run_session`` records the session, trains round by round through a
backend, records each round with its participants and epsilon, evaluates,
saves the model and registers it as a new version.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from tffprod.backends.base import Backend, SiteTarget
from tffprod.privacy.budgets import BudgetPlan, plan_budgets
from tffprod.data.files import content_hash
from tffprod.errors import DatasetError, SessionError, SpecError, TffprodError
from tffprod.privacy.sampling import Population, check_population
from tffprod.data.schema import Schema
from tffprod.config.spec import SessionSpec
from tffprod.task import Task, load_task
from tffprod.sessions.rounds import RoundLoop, RoundReport
from tffprod.training.trainer import Trainer as _Trainer
from tffprod.sessions.finish import register_model as _register_model


@dataclasses.dataclass(frozen=True)
class SessionPlan:
    """A validated session: the spec, its task and the registry rows it reads."""

    spec: SessionSpec
    task: Task
    datasets: tuple[Mapping[str, Any], ...]
    eval_datasets: tuple[Mapping[str, Any], ...]
    fmt: str
    budget: BudgetPlan = BudgetPlan({}, 0, None)

    @property
    def sites(self) -> list[SiteTarget]:
        by_site: dict[str, list] = {}
        for row in self.datasets + self.eval_datasets:
            by_site.setdefault(row["site"], []).append(row)
        return [SiteTarget(name, tuple(rows)) for name, rows in by_site.items()]

    @property
    def population(self) -> Population:
        """The clients the session trains on and how each round samples them."""
        return Population(self.datasets, self.spec.sampling)

    @property
    def sampling_rate(self) -> float:
        """A client's chance to train in a round: q (Poisson), k / N (fixed; accounted as k of N
        without replacement, see ``population.accounting()``), or 1."""
        return self.population.sampling_rate

    @property
    def privacy_unit(self) -> str:
        """``client (column customer_id)`` or ``site dataset (site-level)``."""
        return self.population.unit

    @property
    def training_sites(self) -> list[str]:
        return list(dict.fromkeys(row["site"] for row in self.datasets))


def resolve_datasets(registry: Any, refs: list[str], task: Task, *, verify_files: bool = True) -> list[Mapping[str, Any]]:
    rows = []
    for ref in refs:
        row = registry.get_dataset(ref)
        Schema.from_dict(row["schema"]).check_provides(task.schema, what=f"dataset {row['ref']}")
        if verify_files and not row["path"].startswith("site://"):  # site data is checked by its site
            path = Path(row["path"])
            if not path.is_file():
                raise DatasetError(f"dataset {row['ref']}: file {path} is missing")
            if content_hash(path) != row["content_hash"]:
                raise DatasetError(
                    f"dataset {row['ref']}: {path} changed since it was registered; register it again"
                )
        rows.append(row)
    return rows


def plan_session(spec: SessionSpec, *, registry: Any, verify_files: bool = True,
                 resuming: Optional[str] = None) -> SessionPlan:
    """Validate a spec against the registry; writes nothing. ``resuming`` names the session
    being resumed (its own privacy spend is part of its plan).

    Raises:
        TaskLoadError, NotFoundError, SchemaMismatchError, DatasetError, SpecError,
        PrivacyBudgetError.
    """
    task = load_task(spec.task)
    datasets = resolve_datasets(registry, list(spec.datasets), task, verify_files=verify_files)
    eval_datasets = resolve_datasets(registry, list(spec.eval_datasets), task, verify_files=verify_files)
    formats = sorted({row["format"] for row in datasets + eval_datasets})
    if len(formats) != 1:
        raise DatasetError(f"datasets of one session must share a format, these mix {', '.join(formats)}")
    sites = {row["site"] for row in datasets}
    if spec.min_sites > len(sites):
        raise SpecError(f"min_sites is {spec.min_sites} but the datasets span only {len(sites)} site(s)")
    if spec.federation is not None:
        _check_federation(registry, spec.federation, datasets + eval_datasets)
    population = Population(tuple(datasets), spec.sampling)
    check_population(population)
    z, expected = spec.dp.noise_multiplier, population.expected_clients_per_round
    if population.client_level and spec.dp.mechanism == "gaussian_adaptive" and z and z >= 0.1 * expected:
        raise SpecError(f"'dp.noise_multiplier' = {z} is too large for gaussian_adaptive with {expected:g} expected "
                        f"clients per round: TFF needs noise_multiplier < 0.1 * clients per round")
    budget = plan_budgets(spec, datasets, registry=registry, resuming=resuming)
    return SessionPlan(spec, task, tuple(datasets), tuple(eval_datasets), formats[0], budget)


def _check_federation(registry: Any, federation: str, rows: list[Mapping[str, Any]]) -> None:
    """Refuse datasets at sites outside the session's federation."""
    members = set(registry.get_federation(federation)["sites"])
    for row in rows:
        if row["site"] not in members:
            raise SpecError(f"dataset {row['ref']} is at site {row['site']}, which is not in federation "
                            f"'{federation}' (add it with 'tffprod federation add-site {federation} {row['site']}')")


def run_session(
    plan: SessionPlan,
    *,
    registry: Any,
    backend: Backend,
    artifacts_dir: Path,
    progress: Optional[Callable[[RoundReport], None]] = None,
    frozen: Any = None,
) -> dict:
    """Record and run a planned session; returns the session's registry row.

    The backend must not be open yet; this opens it for the session's sites and
    closes it at the end, ending every process it started. ``frozen``
    (:class:`tffprod.sessions.approval.FrozenComputations`) runs an approved plan's computations
    at the sites, exactly as approved. Each round's server state is checkpointed
    before the round is committed, so ``resume_session`` can continue the session
    after a crash, a failure or a cancel.

    Raises:
        SessionError: training failed; the session is recorded as failed with the reason.
    """
    spec = plan.spec
    with registry.atomic():
        session = registry.create_session(
            name=spec.name,
            spec=dict(spec.to_dict(), plan_id=frozen.plan_id) if frozen is not None else spec.to_dict(),
            task=plan.task.summary(),
            backend=backend.name,
            rounds_planned=spec.rounds,
            datasets=[row["ref"] for row in plan.datasets],
            privacy=plan.population.describe(),
        )
        session_id = session["id"]
        registry.start_session(session_id, coordinator=coordinator_identity())
        registry.record_action("session.run", session_id, {
            "name": spec.name, "plan_id": frozen.plan_id if frozen is not None else None, "backend": backend.name,
            "datasets": session["datasets"], "rounds_planned": spec.rounds})
    return drive_session(plan, session_id, registry=registry, backend=backend, artifacts_dir=artifacts_dir,
                         progress=progress, frozen=frozen)


def end_session(registry: Any, session_id: str, status: str, error: str) -> dict:
    """Ends a session as ``cancelled`` or ``failed`` and audits it, in one transaction."""
    with registry.atomic():
        registry.finish_session(session_id, status=status, error=error)
        registry.record_action("session.end", session_id, {"status": status, "error": error})
    return registry.get_session(session_id)


def coordinator_identity() -> dict:
    """This process, as recorded as a running session's owner."""
    import os
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid()}


def checkpoint_dir(artifacts_dir: Path, spec: SessionSpec, session_id: str) -> Path:
    return Path(artifacts_dir) / spec.name / session_id / "checkpoints"


def drive_session(plan: SessionPlan, session_id: str, *, registry: Any, backend: Backend, artifacts_dir: Path,
                  progress: Optional[Callable[[RoundReport], None]] = None, frozen: Any = None,
                  completed: tuple[dict, ...] = ()) -> dict:
    """Run a recorded, running session from after its ``completed`` rounds to its end.

    Ends the session as ``finished`` (with a new model version), ``cancelled`` (a cancel was
    requested, or Ctrl-C) or ``failed``; the last committed checkpoint is kept in every case.
    """
    spec = plan.spec
    trainer = None
    try:
        backend.frozen = frozen
        backend.federation = spec.federation
        backend.open(plan.sites)
        trainer = _Trainer(plan, backend, frozen)
        loop = RoundLoop(plan, session_id, registry, backend, trainer,
                          checkpoint_dir(artifacts_dir, spec, session_id), completed)
        cancelled = loop.run(progress)
        if cancelled:
            done = len(completed) + loop.rounds_run
            return end_session(registry, session_id, "cancelled", f"cancelled after round {done} of {spec.rounds}")
        stopped = None if loop.last_round == spec.rounds else (
            f"stopped after round {loop.last_round} of {spec.rounds}: one more would exceed the remaining privacy "
            f"budget of {min(plan.budget.remaining, key=plan.budget.remaining.get)}")
        weights = trainer.weights()
        version = _register_model(plan, registry, backend, session_id, weights, loop.train_metrics, loop.ledger,
                                  artifacts_dir, stopped, frozen)  # and ends the session as finished
    except BaseException as e:
        reason = str(e) if isinstance(e, TffprodError) else f"{type(e).__name__}: {e}"
        status = "cancelled" if isinstance(e, KeyboardInterrupt) else "failed"
        end_session(registry, session_id, status, reason.splitlines()[0] if reason else status)
        if isinstance(e, (TffprodError, KeyboardInterrupt)):
            raise
        raise SessionError(f"session {session_id} failed: {reason.splitlines()[0]}") from e
    finally:
        if trainer:
            trainer.close()
        backend.close()
    result = registry.get_session(session_id)
    result["model_version"] = version
    return result


def artifacts_dir_for(registry_path: str | Path) -> Path:
    """Where model artifacts live by default: ``artifacts/`` beside the registry file."""
    return Path(registry_path).resolve().parent / "artifacts"


def train(
    spec: SessionSpec,
    *,
    registry: Any,
    backend: Backend,
    artifacts_dir: Optional[Path] = None,
    progress: Optional[Callable[[RoundReport], None]] = None,
) -> dict:
    """Plan, record and run a session from ``spec``: the whole of ``tffprod session run``."""
    plan = plan_session(spec, registry=registry)
    return run_session(
        plan,
        registry=registry,
        backend=backend,
        artifacts_dir=artifacts_dir or artifacts_dir_for(registry.path),
        progress=progress,
    )
