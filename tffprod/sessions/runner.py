"""Run a planned session: record it, drive its rounds, finish it.

``run_session`` records a :class:`~tffprod.sessions.planning.SessionPlan` as a session,
opens the backend, and drives :class:`~tffprod.sessions.rounds.RoundLoop` (the round
loop) to the end; :mod:`tffprod.sessions.finish` then evaluates, saves the model and
registers it as a new version. ``train`` is the whole of ``tffprod session run``;
``train_from_plan`` runs an approved plan (``session run --plan``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from tffprod.backends.base import Backend
from tffprod.sessions.spec import SessionSpec
from tffprod.errors import PlanError, SessionError, TffprodError
from tffprod.privacy.placement import AT_SITES
from tffprod.protocol.plan_document import load_plan
from tffprod.sessions.approval import check_datasets, thaw
from tffprod.sessions.events import SessionEvents, tensorboard_dir
from tffprod.sessions.finish import register_model as _register_model
from tffprod.sessions.planning import SessionPlan, plan_session
from tffprod.sessions.rounds import RoundLoop, RoundReport
from tffprod.training.trainer import Trainer as _Trainer

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore, RoundRow, SessionRow

log = logging.getLogger(__name__)

__all__ = ["artifacts_dir_for", "drive_session", "end_session", "run_session", "train", "train_from_plan",
           "with_cached_coordinator"]


def run_session(
    plan: SessionPlan,
    *,
    registry: RegistryStore,
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
    if _noise_at_sites(plan) and frozen is None:
        raise SessionError("[dp] puts noise at the sites (noise_placement or eval_noise_multiplier), which they add "
                           "only under a plan they approved; make one with 'tffprod session plan', have the sites "
                           "approve it, and run it with 'tffprod session run --plan'")
    with registry.atomic():
        session = registry.create_session(
            name=spec.name,
            spec=_recorded_spec(spec, backend, frozen),
            task=plan.task.summary(),
            backend=backend.name,
            rounds_planned=spec.rounds,
            datasets=[row["ref"] for row in plan.datasets],
            privacy={**plan.population.describe(), "unit": plan.privacy_unit},
        )
        session_id = session["id"]
        registry.start_session(session_id, coordinator=coordinator_identity())
        log.info("session %s (%s) started: %d rounds on %s, backend %s", session_id, spec.name, spec.rounds,
                 ", ".join(plan.training_sites), backend.name)
        registry.record_action("session.run", session_id, {
            "name": spec.name, "plan_id": frozen.plan_id if frozen is not None else None, "backend": backend.name,
            "datasets": session["datasets"], "rounds_planned": spec.rounds})
    return drive_session(plan, session_id, registry=registry, backend=backend, artifacts_dir=artifacts_dir,
                         progress=progress, frozen=frozen)


def _recorded_spec(spec: SessionSpec, backend: Backend, frozen: Any) -> dict[str, Any]:
    """The spec as the session ran it: the backend it ran on (``--backend`` overrides the file's) and the
    plan's id when it ran a plan."""
    recorded = dict(spec.to_dict(), backend=backend.name)
    return dict(recorded, plan_id=frozen.plan_id) if frozen is not None else recorded


def end_session(registry: RegistryStore, session_id: str, status: str, error: str) -> SessionRow:
    """Ends a session as ``cancelled`` or ``failed`` and audits it, in one transaction."""
    with registry.atomic():
        registry.finish_session(session_id, status=status, error=error)
        registry.record_action("session.end", session_id, {"status": status, "error": error})
    log.log(logging.INFO if status == "cancelled" else logging.ERROR, "session %s %s: %s", session_id, status, error)
    return registry.get_session(session_id)


def coordinator_identity() -> dict:
    """This process, as recorded as a running session's owner."""
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid()}


def checkpoint_dir(artifacts_dir: Path, spec: SessionSpec, session_id: str) -> Path:
    return Path(artifacts_dir) / spec.name / session_id / "checkpoints"


def drive_session(plan: SessionPlan, session_id: str, *, registry: RegistryStore, backend: Backend, artifacts_dir: Path,
                  progress: Optional[Callable[[RoundReport], None]] = None, frozen: Any = None,
                  completed: tuple[RoundRow, ...] = ()) -> dict:
    """Run a recorded, running session from after its ``completed`` rounds to its end.

    Ends the session as ``finished`` (with a new model version), ``cancelled`` (a cancel was
    requested, or Ctrl-C) or ``failed``; the last committed checkpoint is kept in every case.
    Each committed round and the evaluation go to TensorBoard event files beside the checkpoints
    (:mod:`tffprod.sessions.events`).
    """
    spec = plan.spec
    events = SessionEvents(tensorboard_dir(artifacts_dir, spec.name, session_id), session_id)
    try:
        events.catch_up(completed)
        backend.open(plan.sites, frozen=frozen, federation=spec.federation)
        trainer = _Trainer(plan, backend, with_cached_coordinator(frozen, plan, registry))
        loop = RoundLoop(plan, session_id, registry, backend, trainer,
                         checkpoint_dir(artifacts_dir, spec, session_id), completed, events=events)
        cancelled = loop.run(progress)
        if cancelled:
            done = len(completed) + loop.rounds_run
            ended = end_session(registry, session_id, "cancelled", f"cancelled after round {done} of {spec.rounds}")
            return dict(ended)  # a plain dict, as a finished session's result below
        stopped = None if loop.last_round == spec.rounds else (
            f"stopped after round {loop.last_round} of {spec.rounds}: one more would exceed the remaining privacy "
            f"budget of {min(plan.budget.remaining, key=plan.budget.remaining.__getitem__)}")
        weights = trainer.weights()
        version = _register_model(plan, registry, backend, session_id, weights, loop.train_metrics, loop.ledger,
                                  artifacts_dir, stopped, frozen)  # and ends the session as finished
        events.evaluation(registry, version, step=loop.last_round)
        log.info("session %s finished: model %s:%s", session_id, version.get("name"), version.get("version"))
    except BaseException as e:
        reason = str(e) if isinstance(e, TffprodError) else f"{type(e).__name__}: {e}"
        status = "cancelled" if isinstance(e, KeyboardInterrupt) else "failed"
        end_session(registry, session_id, status, reason.splitlines()[0] if reason else status)
        if isinstance(e, (TffprodError, KeyboardInterrupt)):
            raise
        raise SessionError(f"session {session_id} failed: {reason.splitlines()[0]}") from e
    finally:
        events.close()
        backend.close()
    return {**registry.get_session(session_id), "model_version": version}  # the row plus a key it lacks


def with_cached_coordinator(frozen: Any, plan: SessionPlan, registry: RegistryStore) -> Any:
    """``frozen`` (a plan's computations) with the coordinator's own computations from the plan cache
    beside the registry, when ``session plan`` left them there for this plan's content; else
    ``frozen`` as it is, and the trainer builds them (:mod:`tffprod.sessions.plan_cache`)."""
    if frozen is None or frozen.coordinator is not None:
        return frozen
    import dataclasses

    from tffprod.sessions import plan_cache

    # The key of the plan's own spec: a resumed session's recorded spec names its backend and pins its
    # datasets' versions, which ``session plan`` did not see.
    planned = plan if frozen.plan is None else dataclasses.replace(
        plan, spec=SessionSpec.from_dict(frozen.plan.document["spec"]))
    key = plan_cache.cache_key(planned)
    if key is None:
        log.info("coordinator computations are built: the task's source cannot be read, so nothing is cached")
        return frozen
    block = plan_cache.load_coordinator(artifacts_dir_for(registry.path) / plan_cache.DIRECTORY, key)
    if block is None or "unavailable" in block:
        log.info("coordinator computations are built: %s", f"they cannot be cached ({block['unavailable']})"
                 if block else f"the plan cache holds none for this plan's content ({key[:16]}...)")
        return frozen
    from tffprod.training.coordinator import thaw

    try:
        computations = thaw(block, source=f"plan cache ({key[:16]}...)")
    except Exception as e:  # a block this code cannot read: a miss
        log.warning("coordinator computations are built: the plan cache's do not load (%s: %s)",
                    type(e).__name__, str(e)[:200])
        return frozen
    return dataclasses.replace(frozen, coordinator=computations)


def artifacts_dir_for(registry_path: str | Path) -> Path:
    """Where model artifacts live by default: ``artifacts/`` beside the registry file."""
    return Path(registry_path).resolve().parent / "artifacts"


def train(
    spec: SessionSpec,
    *,
    registry: RegistryStore,
    backend: Backend,
    artifacts_dir: Optional[Path] = None,
    progress: Optional[Callable[[RoundReport], None]] = None,
) -> dict:
    """Plan, record and run a session from ``spec``: the whole of ``tffprod session run``.

    With the noise at the sites on the local backend, the session runs under a plan made here
    (written beside its artifacts), which each simulated site approves and noises its releases by.
    """
    plan = plan_session(spec, registry=registry)
    if backend.name == "remote" and not _noise_at_sites(plan):  # (noise at the sites is refused below)
        refuse_sites_requiring_approval(registry, plan)
    artifacts_dir = artifacts_dir or artifacts_dir_for(registry.path)
    frozen = None
    if _noise_at_sites(plan) and backend.name == "local":
        from tffprod.sessions.approval import make_plan, write_plan

        document = make_plan(plan)
        path = write_plan(document, Path(artifacts_dir) / spec.name / f"plan-{document['plan_id'][:16]}.json")
        log.info("noise at the simulated sites: session %s runs under plan %s", spec.name, path)
        frozen = thaw(load_plan(path))
    return run_session(plan, registry=registry, backend=backend, artifacts_dir=artifacts_dir, progress=progress,
                       frozen=frozen)


def _noise_at_sites(plan: SessionPlan) -> bool:
    """Whether the sites add noise to training or evaluation releases (only under a plan they approved)."""
    dp = plan.spec.dp
    return dp.noise_placement in AT_SITES or (dp.eval_noise_multiplier is not None and bool(plan.eval_datasets))


def refuse_sites_requiring_approval(registry: RegistryStore, plan: SessionPlan) -> None:
    """Ask the session's sites for their policy before anything is compiled or recorded: a site that runs
    only approved plans would refuse a session run from a spec.

    Raises:
        PlanError: naming the sites, and the three commands that run the session under a plan instead.
    """
    from tffprod.sites.admin import sites_requiring_approval

    strict = sites_requiring_approval(registry, [*plan.training_sites, *(row["site"] for row in plan.eval_datasets)])
    if strict:
        raise PlanError(f"site{'s' if len(strict) > 1 else ''} {', '.join(strict)} run{'' if len(strict) > 1 else 's'} "
                        "only plans their operators approved; nothing was run or recorded. Make a plan "
                        "('tffprod session plan --spec SPEC --out PLAN'), have each site approve it ('tffprod site "
                        "approve PLAN --config SITE.toml'), then run 'tffprod session run --plan PLAN'")


def refuse_used_plan(registry: RegistryStore, plan: Any) -> None:
    """A plan trains one session: refuse it, before anything runs or is recorded, once a session of this
    registry has trained rounds with it. The sites would refuse its rounds (or serve them again as repeats,
    which this registry would count twice).

    Raises:
        PlanError: saying which session used the plan, and what to do instead.
    """
    used = [s for s in registry.list_sessions() if s["spec"].get("plan_id") == plan.plan_id and s["rounds_completed"]]
    if not used:
        return
    last = used[0]  # newest first
    done = f"session {last['id']} trained {last['rounds_completed']} of its {last['rounds_planned']} round(s)"
    if last["status"] in ("finished", "cancelled"):
        raise PlanError(f"plan {plan.plan_id[:16]} has been used: {done} ({last['status']}); make a new plan "
                        "('tffprod session plan --spec SPEC --out PLAN'), have the sites approve it, and run that")
    raise PlanError(f"plan {plan.plan_id[:16]} is in use: {done} ({last['status']}); continue that session with "
                    f"'tffprod session resume {last['id']}'")


def train_from_plan(path: os.PathLike | str, *, registry: RegistryStore, backend: Any, artifacts_dir: Any = None,
                    progress: Any = None) -> dict:
    """``tffprod session run --plan``: run a plan's session with its frozen computations.

    Raises:
        PlanError: the plan does not verify, or an earlier session already trained with it (nothing is run or
            recorded).
        SessionError: the registry's datasets or the task no longer match the plan; training failed.
    """
    plan = load_plan(path)
    if plan.evaluation_only:
        raise SessionError(f"plan {plan.plan_id[:16]} is an evaluation plan: run it with 'tffprod eval REF --plan'")
    if plan.computation_only:
        raise SessionError(f"plan {plan.plan_id[:16]} is a computation plan: run it with run_federated(..., plan=)")
    refuse_used_plan(registry, plan)
    session = plan_session(SessionSpec.from_dict(plan.document["spec"]), registry=registry)
    check_datasets(plan, session)
    return run_session(session, registry=registry, backend=backend,
                       artifacts_dir=artifacts_dir or artifacts_dir_for(registry.path), progress=progress,
                       frozen=thaw(plan))
