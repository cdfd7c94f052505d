"""Training sessions and the rounds recorded while they run.

A session moves ``pending -> running -> finished | failed | cancelled``;
each round is recorded once, together with the session's progress counter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from tffprod.errors import NotFoundError, RegistryError
from tffprod.registry import privacy
from tffprod.registry.codec import from_json, new_session_id, seconds_between, to_json, utc_now
from tffprod.registry.connection import first_row, write_transaction
from tffprod.registry.protocol import RoundRow, SessionRow

if TYPE_CHECKING:
    from sqlite_utils import Database

STATUSES = ("pending", "running", "finished", "failed", "cancelled")
FINAL_STATUSES = ("finished", "failed", "cancelled")
PARTICIPANT_STATUSES = ("ok", "timeout", "error")


def _session(row: dict[str, Any]) -> SessionRow:
    decoded = {key: from_json(row[key]) for key in ("spec", "task", "datasets")}
    decoded["privacy"] = from_json(row["privacy"]) if row.get("privacy") else None
    decoded["coordinator"] = from_json(row["coordinator"]) if row.get("coordinator") else None
    # SELECT * of a migrated sessions table: every SessionRow key (the JSON columns decoded).
    return cast(SessionRow, {**row, **decoded, "duration_s": seconds_between(row["started_at"], row["finished_at"])})


def _round(row: dict[str, Any]) -> RoundRow:
    # SELECT * of a migrated rounds table: every RoundRow key (the JSON columns decoded).
    return cast(RoundRow, {**row, "metrics": from_json(row["metrics"]), "participants": from_json(row["participants"])})


def require_session(db: Database, session_id: str) -> None:
    """Raises NotFoundError unless the session exists."""
    if first_row(db, "SELECT 1 AS found FROM sessions WHERE id = ?", [session_id]) is None:
        raise NotFoundError(f"unknown session {session_id!r}")


def create_session(db: Database, **fields: Any) -> SessionRow:
    """Records a new pending session; see ``Registry.create_session``."""
    now = utc_now()
    with write_transaction(db):
        session_id = new_session_id(now)
        while first_row(db, "SELECT 1 AS taken FROM sessions WHERE id = ?", [session_id]):
            session_id = new_session_id(now)
        db.execute(
            "INSERT INTO sessions (id, name, status, backend, spec, task, datasets, rounds_planned,"
            " created_at, privacy) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
            [
                session_id,
                fields["name"],
                fields["backend"],
                to_json(fields["spec"]),
                to_json(fields["task"]),
                to_json(list(fields["datasets"])),
                int(fields["rounds_planned"]),
                now,
                None if fields.get("privacy") is None else to_json(fields["privacy"]),
            ],
        )
    return get_session(db, session_id)


def start_session(db: Database, session_id: str, coordinator: dict[str, Any] | None = None) -> SessionRow:
    """Marks a session running, stamps ``started_at`` and records its coordinator process."""
    with write_transaction(db):
        require_session(db, session_id)
        db.execute(
            "UPDATE sessions SET status = 'running', started_at = ?, coordinator = ? WHERE id = ?",
            [utc_now(), None if coordinator is None else to_json(coordinator), session_id],
        )
    return get_session(db, session_id)


def claim_session(db: Database, session_id: str, coordinator: dict[str, Any], expected: dict[str, Any] | None
                  ) -> SessionRow:
    """Make ``coordinator`` the owner of a session being resumed; see ``Registry.claim_session``."""
    with write_transaction(db):
        row = first_row(db, "SELECT status, coordinator FROM sessions WHERE id = ?", [session_id])
        if row is None:
            raise NotFoundError(f"unknown session {session_id!r}")
        if row["status"] == "finished":
            raise RegistryError(f"session {session_id} is finished; there is nothing to resume")
        current = from_json(row["coordinator"]) if row["coordinator"] else None
        if row["status"] in ("running", "pending") and current != expected:
            raise RegistryError(f"session {session_id} was claimed by another coordinator ({current}) meanwhile")
        db.execute(
            "UPDATE sessions SET status = 'running', coordinator = ?, error = NULL, finished_at = NULL,"
            " cancel_requested_at = NULL, resumed = resumed + 1 WHERE id = ?",
            [to_json(coordinator), session_id],
        )
    return get_session(db, session_id)


def request_cancel(db: Database, session_id: str) -> SessionRow:
    """Ask a running session to stop at its next round boundary; see ``Registry.request_cancel``."""
    with write_transaction(db):
        row = first_row(db, "SELECT status FROM sessions WHERE id = ?", [session_id])
        if row is None:
            raise NotFoundError(f"unknown session {session_id!r}")
        if row["status"] not in ("pending", "running"):
            raise RegistryError(f"session {session_id} is {row['status']}, not running; nothing to cancel")
        db.execute("UPDATE sessions SET cancel_requested_at = ? WHERE id = ? AND cancel_requested_at IS NULL",
                   [utc_now(), session_id])
    return get_session(db, session_id)


def finish_session(db: Database, session_id: str, status: str, error: str | None) -> SessionRow:
    """Ends a session with a final status; see ``Registry.finish_session``."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"final session status must be one of {', '.join(FINAL_STATUSES)}, got {status!r}")
    with write_transaction(db):
        mark_finished(db, session_id, status, error)
    return get_session(db, session_id)


def mark_finished(db: Database, session_id: str, status: str, error: str | None) -> None:
    """``finish_session``'s update, inside the caller's transaction."""
    require_session(db, session_id)
    db.execute("UPDATE sessions SET status = ?, error = ?, finished_at = ? WHERE id = ?",
               [status, error, utc_now(), session_id])


def get_session(db: Database, session_id: str) -> SessionRow:
    """Returns one session. Raises NotFoundError if unknown."""
    row = first_row(db, "SELECT * FROM sessions WHERE id = ?", [session_id])
    if row is None:
        raise NotFoundError(f"unknown session {session_id!r}")
    return _session(row)


def list_sessions(db: Database, status: str | None) -> list[SessionRow]:
    """Returns sessions newest first, optionally only those with ``status``."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"session status must be one of {', '.join(STATUSES)}, got {status!r}")
    where, params = ("WHERE status = ?", [status]) if status else ("", [])
    sql = f"SELECT * FROM sessions {where} ORDER BY created_at DESC, rowid DESC"
    return [_session(row) for row in db.query(sql, params)]


def _check_participants(participants: list[dict]) -> list[dict]:
    for participant in participants:
        if participant.get("status") not in PARTICIPANT_STATUSES:
            raise ValueError(
                f"participant status must be one of {', '.join(PARTICIPANT_STATUSES)}, got {participant!r}"
            )
    return list(participants)


def record_round(db: Database, session_id: str, **fields: Any) -> RoundRow:
    """Records one round, its privacy spend and the session's progress in one transaction."""
    round_num = int(fields["round_num"])
    if round_num < 1:
        raise ValueError(f"round_num must be >= 1, got {round_num}")
    participants = _check_participants(fields["participants"])
    spend = privacy.check_spend(fields.get("spend"))
    with write_transaction(db):
        require_session(db, session_id)
        now = utc_now()
        sql = "SELECT 1 AS taken FROM rounds WHERE session_id = ? AND round_num = ?"
        if first_row(db, sql, [session_id, round_num]) is not None:
            raise RegistryError(f"session {session_id!r} already has round {round_num} recorded")
        last = first_row(db, "SELECT rounds_completed FROM sessions WHERE id = ?", [session_id])
        if last is not None and round_num != last["rounds_completed"] + 1:
            raise RegistryError(f"session {session_id!r} has {last['rounds_completed']} rounds recorded; "
                                f"round {round_num} cannot come next")
        db.execute(
            "INSERT INTO rounds (session_id, round_num, metrics, participants, duration_s, epsilon,"
            " recorded_at, sampling_rate, clients, epsilon_pld, checkpoint, checkpoint_sha256)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                session_id,
                round_num,
                to_json(fields["metrics"]),
                to_json(participants),
                float(fields["duration_s"]),
                None if fields["epsilon"] is None else float(fields["epsilon"]),
                now,
                None if fields.get("sampling_rate") is None else float(fields["sampling_rate"]),
                None if fields.get("clients") is None else int(fields["clients"]),
                None if fields.get("epsilon_pld") is None else float(fields["epsilon_pld"]),
                fields.get("checkpoint"),
                fields.get("checkpoint_sha256"),
            ],
        )
        privacy.upsert_spend(db, session_id, spend, now)
        db.execute("UPDATE sessions SET rounds_completed = ? WHERE id = ?", [round_num, session_id])
        row = first_row(db, "SELECT * FROM rounds WHERE session_id = ? AND round_num = ?", [session_id, round_num])
    assert row is not None  # inserted just above, in the same transaction
    return _round(row)


def list_rounds(db: Database, session_id: str) -> list[RoundRow]:
    """Returns a session's rounds in order. Raises NotFoundError if the session is unknown."""
    require_session(db, session_id)
    sql = "SELECT * FROM rounds WHERE session_id = ? ORDER BY round_num"
    return [_round(row) for row in db.query(sql, [session_id])]
