"""Continue, cancel and export sessions that did not finish.

A session is resumable when it is ``failed`` or ``cancelled``, or still
``running`` while the coordinator process that owned it is gone (killed, or
its machine restarted). Resuming replans it from its recorded spec and
dataset versions, claims it for this process, and runs the rounds after the
last committed one from that round's checkpoint (:mod:`tffprod.sessions.rounds`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from tffprod.errors import SessionError, TffprodError

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore, RoundRow, SessionRow

__all__ = ["cancel_session", "coordinator_alive", "export_session", "resume_session", "resumable"]


def coordinator_alive(coordinator: Optional[dict]) -> bool:
    """Whether the process recorded as a session's owner still runs (on this host; another
    host's coordinator is assumed alive, since this host cannot see it)."""
    if not coordinator:
        return False
    if coordinator.get("host") != socket.gethostname():
        return True
    pid = int(coordinator.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _is_running(pid)


def _is_running(pid: int) -> bool:
    """False for a zombie (killed, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def resumable(session: Mapping[str, Any], *, force: bool = False) -> Optional[str]:
    """Why ``session`` cannot be resumed, or None if it can. ``force`` takes over a running
    session whose coordinator this host cannot see (on another host) and is known to be dead."""
    status = session["status"]
    if status == "finished":
        return f"session {session['id']} is finished"
    owner = session.get("coordinator")
    if status in ("running", "pending") and owner is not None and coordinator_alive(owner):
        if force and owner.get("host") != socket.gethostname():
            return None
        hint = " or, if that host's coordinator is dead, resume with --force" \
            if owner.get("host") != socket.gethostname() else ""
        return (f"session {session['id']} is running in process {owner['pid']} on {owner['host']}; "
                f"cancel it first ('tffprod session cancel {session['id']}'){hint}")
    return None


def _spec(session: SessionRow) -> Any:
    """The session's spec, on the dataset versions it started with."""
    from tffprod.sessions.spec import SessionSpec

    data = {key: value for key, value in session["spec"].items() if key != "plan_id"}
    data["datasets"] = list(session["datasets"])
    return SessionSpec.from_dict(data)


def resume_session(session_id: str, *, registry: RegistryStore, backend: Any, artifacts_dir: Optional[Path] = None,
                   progress: Optional[Callable] = None, plan_path: Optional[str] = None, force: bool = False) -> dict:
    """Continue ``session_id`` after its last committed round; returns its row as ``run_session`` does.

    A session run from an approved plan resumes only with that plan (``plan_path``). ``force``
    takes over a session whose coordinator ran on another host (see :func:`resumable`).

    Raises:
        SessionError: it cannot be resumed (finished, still running, no checkpoint, a damaged
            checkpoint, the plan is missing or another one).
    """
    from tffprod.sessions.runner import artifacts_dir_for, coordinator_identity, drive_session
    from tffprod.sessions.planning import plan_session

    session = registry.get_session(session_id)
    reason = resumable(session, force=force)
    if reason:
        raise SessionError(f"cannot resume: {reason}")
    frozen = _frozen(session, plan_path)
    plan = plan_session(_spec(session), registry=registry, resuming=session_id)
    if frozen is not None:
        from tffprod.sessions.approval import check_datasets
        from tffprod.protocol.plan_document import load_plan

        assert plan_path is not None  # _frozen returns a plan only when given its path
        check_datasets(load_plan(plan_path), plan)
    completed = tuple(registry.list_rounds(session_id))
    checkpoint = completed[-1].get("checkpoint") if completed else None
    if checkpoint:
        from tffprod.training.checkpoint import verify_checkpoint

        verify_checkpoint(checkpoint, _committed_sha256(session_id, completed[-1]))
    with registry.atomic():
        registry.claim_session(session_id, coordinator=coordinator_identity(), expected=session.get("coordinator"))
        registry.record_action("session.resume", session_id, {"after_round": len(completed),
                                                              "previous_status": session["status"]})
    return drive_session(plan, session_id, registry=registry, backend=backend,
                         artifacts_dir=artifacts_dir or artifacts_dir_for(registry.path), progress=progress,
                         frozen=frozen, completed=completed)


def _committed_sha256(session_id: str, row: RoundRow) -> str:
    """The SHA-256 committed with a round's checkpoint: without one, the file cannot be verified."""
    sha256 = row["checkpoint_sha256"]
    if sha256 is None:
        raise SessionError(f"session {session_id}: the checkpoint of round {row['round_num']} has no recorded "
                           "SHA-256, so it cannot be verified")
    return sha256


def _frozen(session: SessionRow, plan_path: Optional[str]) -> Any:
    plan_id = session["spec"].get("plan_id")
    if plan_id is None:
        if plan_path:
            raise SessionError(f"session {session['id']} was not run from a plan; resume it without --plan")
        return None
    if not plan_path:
        raise SessionError(f"session {session['id']} runs approved plan {plan_id[:16]}; resume it with "
                           "--plan PLAN (the same plan file)")
    from tffprod.protocol.plan_document import load_plan
    from tffprod.sessions.approval import thaw

    plan = load_plan(plan_path)
    if plan.plan_id != plan_id:
        raise SessionError(f"plan {plan_path} is {plan.plan_id[:16]}, session {session['id']} runs {plan_id[:16]}")
    return thaw(plan)


def cancel_session(session_id: str, *, registry: RegistryStore) -> SessionRow:
    """Stop a session at its next round boundary, audited; a session whose coordinator is
    gone is cancelled at once. Returns the session row.

    Raises:
        NotFoundError: unknown session. RegistryError: it is not pending or running.
    """
    from tffprod.sessions.runner import end_session  # before taking the registry's write lock

    with registry.atomic():
        session = registry.request_cancel(session_id)
        registry.record_action("session.cancel", session_id, {"status": session["status"]})
        if coordinator_alive(session.get("coordinator")):
            return session
        message = f"cancelled after round {session['rounds_completed']} of {session['rounds_planned']} " \
                  "(its coordinator was gone)"
        end_session(registry, session_id, "cancelled", message)
    return registry.get_session(session_id)


def export_session(session_id: str, *, registry: RegistryStore, out_dir: Path, fmt: str = "savedmodel",
                   say: Callable[[str], None] = lambda _: None) -> dict:
    """Write the model of a session's last committed round as ``model export`` writes a version: a
    SavedModel at ``out_dir`` (or a ``.keras`` file) with its model card (:func:`tffprod.models.card.session_card`).

    Raises:
        SessionError: no committed round, or its checkpoint is damaged.
        TffprodError: unknown format, or ``out_dir`` exists and is not empty (nothing is written).
    """
    import shutil
    import tempfile

    from tffprod.backends.local import LocalBackend
    from tffprod.models.card import session_card
    from tffprod.models.export import FORMATS, export_artifact, save_artifacts
    from tffprod.training.checkpoint import load_checkpoint
    from tffprod.sessions.planning import plan_session
    from tffprod.training.trainer import training_process

    session = registry.get_session(session_id)
    rounds = registry.list_rounds(session_id)
    checkpoint = rounds[-1].get("checkpoint") if rounds else None
    if not checkpoint:
        raise SessionError(f"session {session_id} has no committed round with a checkpoint to export")
    last = rounds[-1]
    if fmt not in FORMATS:
        raise TffprodError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TffprodError(f"{out} already exists; choose a new --out path")
    plan = plan_session(_spec(session), registry=registry, verify_files=False, resuming=session_id)
    say(f"exporting session {session_id}'s round {last['round_num']}: loading TensorFlow, rebuilding the model from "
        "its checkpoint (about 15-20 s)")
    process = training_process(plan)
    with LocalBackend() as backend:
        backend.open([])
        ctx = backend.coordinator_context()
        state = load_checkpoint(checkpoint, _committed_sha256(session_id, last), ctx.invoke(process.initialize, None))
        weights = ctx.invoke(process.get_model_weights, state)
    card = session_card(session, last, [registry.get_dataset(ref) for ref in session["datasets"]])
    staging = Path(tempfile.mkdtemp(prefix="tffprod-export-"))
    try:
        path = export_artifact(save_artifacts(plan.task, weights, staging / "artifacts"), out, fmt=fmt, card=card)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    registry.record_action("session.export", session_id, {"round": last["round_num"], "out": str(path)})
    return {"session": session_id, "round": last["round_num"], "format": fmt, "path": str(path)}


def describe_health(session: dict, rounds: list[dict]) -> dict:
    """The sites quarantined in ``session`` by its recorded rounds
    (see :class:`tffprod.sessions.reliability.SiteHealth`)."""
    from tffprod.config.reliability import ReliabilityConfig
    from tffprod.sessions.reliability import SiteHealth

    config = ReliabilityConfig.from_dict(session["spec"].get("reliability") or {})
    health = SiteHealth(config.quarantine_after)
    for row in rounds:
        health.observe(row["round_num"], row["participants"])
    return dict(health.quarantined)
