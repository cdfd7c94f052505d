"""The coordinator's audit log: an append-only, hash-chained record of operator actions.

Each entry (table ``audit``) holds ``seq`` (1, 2, ...), ``at``, ``actor``,
``action`` (such as ``"dataset.register"``), ``subject`` (what it acted on) and
``details`` (a JSON object), plus ``prev_hash`` (the previous entry's hash; 64
zeros for the first) and its own ``hash``::

    hash = sha256(canonical JSON of [seq, at, actor, action, subject, details, prev_hash])

with ``details`` as the stored JSON text. Changing any stored byte of an entry
breaks its hash; removing or adding one breaks a ``seq`` or a ``prev_hash``
link. The chain alone cannot show that its *last* entries were removed, so the
table ``audit_head`` keeps the last ``seq`` and ``hash``, updated in the same
transaction as each append; :func:`verify` compares the chain's end with it.

What this does not protect against: someone who can rewrite the whole database
can rebuild a consistent chain and head. An operator who notes the head
(``tffprod audit verify`` prints it) somewhere else can later check that the
chain still contains it (``expect_head``).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from tffprod.errors import AuditError
from tffprod.registry.codec import from_json, to_json, utc_now
from tffprod.registry.connection import first_row, write_transaction

if TYPE_CHECKING:
    from sqlite_utils import Database

GENESIS = "0" * 64
_FIELDS = ("seq", "at", "actor", "action", "subject", "details", "prev_hash")


def current_actor() -> str:
    """The OS user running this process (``uid:N`` when the user has no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return f"uid:{os.getuid()}"


def entry_hash(row: dict[str, Any]) -> str:
    """The SHA-256 (hex) of an entry's canonical JSON; ``row["details"]`` is the stored JSON text."""
    canonical = json.dumps([row[key] for key in _FIELDS], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _entry(row: dict[str, Any]) -> dict[str, Any]:
    return {**{key: row[key] for key in _FIELDS + ("hash",)}, "details": from_json(row["details"])}


def _head(db: Database) -> dict[str, Any] | None:
    return first_row(db, "SELECT seq, hash FROM audit_head WHERE id = 1", [])


def append(db: Database, action: str, subject: str, details: dict | None = None, *,
           actor: str | None = None) -> dict[str, Any]:
    """Appends one entry and moves the head, in one transaction; see ``Registry.record_action``.

    The new entry links to the recorded head (not to whatever row is last), so
    entries deleted from the end stay detectable after later appends.
    """
    if not isinstance(action, str) or not action.strip():
        raise ValueError(f"an audit action must be a non-empty string, got {action!r}")
    if not isinstance(subject, str):
        raise ValueError(f"an audit subject must be a string, got {subject!r}")
    if details is not None and not isinstance(details, dict):
        raise ValueError(f"audit details must be a dict, got {type(details).__name__}")
    with write_transaction(db):
        head = _head(db) or first_row(db, "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [])
        row = {
            "seq": (head["seq"] if head else 0) + 1,
            "at": utc_now(),
            "actor": actor or current_actor(),
            "action": action,
            "subject": subject,
            "details": to_json(details or {}),
            "prev_hash": head["hash"] if head else GENESIS,
        }
        row["hash"] = entry_hash(row)
        db.execute(
            "INSERT INTO audit (seq, at, actor, action, subject, details, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [row[key] for key in _FIELDS + ("hash",)],
        )
        db.execute(
            "INSERT INTO audit_head (id, seq, hash, updated_at) VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
            " SET seq = excluded.seq, hash = excluded.hash, updated_at = excluded.updated_at",
            [row["seq"], row["hash"], row["at"]],
        )
    return _entry(row)


def list_entries(db: Database, limit: int | None = None, action: str | None = None) -> list[dict[str, Any]]:
    """Entries newest first (only ``action`` if given; at most ``limit``); see ``Registry.list_audit``."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit!r}")
    where, params = ("WHERE action = ?", [action]) if action else ("", [])
    sql = f"SELECT * FROM audit {where} ORDER BY seq DESC" + (" LIMIT ?" if limit else "")
    return [_entry(row) for row in db.query(sql, params + ([limit] if limit else []))]


def _problem(kind: str, seq: int | None, message: str) -> dict[str, Any]:
    return {"kind": kind, "seq": seq, "message": message}


def _chain_problem(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first problem of the chain itself (rows in ``seq`` order), or None."""
    for i, row in enumerate(rows):
        seq = row["seq"]
        prev = rows[i - 1] if i else None
        expected_seq = prev["seq"] + 1 if prev else 1
        if seq != expected_seq:
            missing = str(expected_seq) if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
            after = f"entry {prev['seq']}" if prev else "the start of the chain"
            return _problem("deleted", expected_seq,
                            f"audit entry {missing} deleted: entry {seq} follows {after}")
        expected_prev = prev["hash"] if prev else GENESIS
        if row["prev_hash"] != expected_prev:
            before = rows[i - 2]["hash"] if i >= 2 else GENESIS if i == 1 else None
            if prev is not None and row["prev_hash"] == before:
                return _problem("inserted", prev["seq"],
                                f"audit entry {prev['seq']} inserted: entry {seq} links to the entry before it")
            what = f"entry {prev['seq']}" if prev else "the start of the chain"
            return _problem("unlinked", seq,
                            f"audit entry {seq} does not link to {what}: an entry between them was deleted or "
                            f"replaced, or entry {seq} was inserted")
        if entry_hash(row) != row["hash"]:
            return _problem("edited", seq, f"audit entry {seq} edited: its content does not match its hash")
    return None


def _head_problem(rows: list[dict[str, Any]], head: dict[str, Any] | None) -> dict[str, Any] | None:
    last = rows[-1] if rows else None
    if head is None:
        return None if last is None else _problem("head", None, "audit head missing: the head record was deleted")
    if last is None or head["seq"] > last["seq"]:
        first = last["seq"] + 1 if last else 1
        missing = str(first) if head["seq"] == first else f"{first}..{head['seq']}"
        return _problem("deleted", first, f"audit entry {missing} deleted: the head records entry {head['seq']}")
    if head["seq"] < last["seq"]:
        return _problem("inserted", head["seq"] + 1,
                        f"audit entry {head['seq'] + 1} inserted: it follows the recorded head (entry {head['seq']})")
    if head["hash"] != last["hash"]:
        return _problem("head", last["seq"],
                        f"audit entry {last['seq']} does not match the recorded head: replaced or rehashed")
    return None


def verify(db: Database, expect_head: str | None = None) -> dict[str, Any]:
    """Walks the chain from the first entry; see ``Registry.verify_audit``."""
    rows = list(db.query("SELECT * FROM audit ORDER BY seq"))
    head = _head(db)
    problem = _chain_problem(rows) or _head_problem(rows, head)
    if problem is None and expect_head is not None:
        noted = expect_head.strip().lower()
        if not any(row["hash"] == noted for row in rows):
            problem = _problem("expected-head", None,
                               f"audit head {noted} is not in the chain: the log was rewritten or truncated")
    report = {
        "ok": problem is None,
        "entries": len(rows),
        "head": None if not rows else {"seq": rows[-1]["seq"], "hash": rows[-1]["hash"]},
        "problem": problem,
    }
    if problem is not None:
        raise AuditError(problem["message"], report=report)
    return report
