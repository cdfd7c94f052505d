"""Opening the registry's SQLite file, transactions, and the one error boundary.

``translate_errors`` is the only place in ``tffprod.registry`` where
``sqlite3`` exceptions are caught; every public ``Registry`` method runs inside
it, so callers only ever see ``tffprod`` errors:

    sqlite3.Error
    ├── OperationalError  cannot open / locked / read-only  -> RegistryError
    ├── DatabaseError     file is not a database (corrupt)  -> RegistryError
    ├── IntegrityError    a constraint refused a write      -> RegistryError
    └── ProgrammingError  the registry was already closed   -> RegistryError

``sqlite_utils`` is imported inside :func:`connect`, not at module level: it
pulls in NumPy and click, and ``import tffprod.registry`` should stay cheap.
"""

from __future__ import annotations

import contextlib
import sqlite3
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tffprod.errors import RegistryError

if TYPE_CHECKING:
    from sqlite_utils import Database

BUSY_TIMEOUT_S = 5.0
# How many write_transaction blocks are open on each connection (0 or absent: none).
_WRITE_DEPTH: weakref.WeakKeyDictionary[Database, int] = weakref.WeakKeyDictionary()

_HINTS = {
    "unable to open database file": "does the directory exist, and is the path writable and not a directory?",
    "file is not a database": "the file is corrupt or is not a tffprod registry",
    "database is locked": f"another process held the registry for more than {BUSY_TIMEOUT_S:g} s",
    "attempt to write a readonly database": "the file or its directory is read-only",
}


@contextlib.contextmanager
def translate_errors(path: str) -> Iterator[None]:
    """Turns any ``sqlite3.Error`` raised inside the block into a ``RegistryError``.

    Args:
        path: The registry path, named in the one-line message.

    Raises:
        RegistryError: instead of any ``sqlite3.Error``.
    """
    try:
        yield
    except sqlite3.Error as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = _HINTS.get(problem)
        detail = f"{problem} ({hint})" if hint else problem
        raise RegistryError(f"registry {path}: {detail}") from exc


@contextlib.contextmanager
def write_transaction(db: Database) -> Iterator[None]:
    """Runs the block in one ``BEGIN IMMEDIATE`` transaction.

    ``IMMEDIATE`` takes the write lock up front, so a read-then-write (such as
    "latest version + 1") cannot race another writer, and a busy registry waits
    for the busy timeout instead of failing at the first write.

    Inside another ``write_transaction`` (``Registry.atomic``), the block is a
    savepoint of the outer transaction instead: its writes are undone if it
    raises, and committed only with the outer transaction.

    Raises:
        Whatever the block raises, after rolling the transaction (or savepoint) back.
    """
    depth = _WRITE_DEPTH.get(db, 0)
    savepoint = f"tffprod_{depth}"
    db.conn.execute(f"SAVEPOINT {savepoint}" if depth else "BEGIN IMMEDIATE")
    _WRITE_DEPTH[db] = depth + 1
    try:
        yield
        db.conn.execute(f"RELEASE {savepoint}" if depth else "COMMIT")
    except BaseException:
        if not depth:
            db.rollback()  # a no-op if the transaction is already gone
        elif db.conn.in_transaction:
            db.conn.execute(f"ROLLBACK TO {savepoint}")
            db.conn.execute(f"RELEASE {savepoint}")
        raise
    finally:
        _WRITE_DEPTH[db] = depth


def connect(path: str) -> Database:
    """Opens (creating if needed) a registry file and brings its schema up to date.

    The connection uses WAL journaling (file databases), a busy timeout and
    enforced foreign keys. Pending migrations run under one write lock, so two
    processes opening a new registry at once cannot both apply them.

    Args:
        path: A file path or ``":memory:"``. Parent directories are not created.

    Returns:
        A ``sqlite_utils.Database``.

    Raises:
        sqlite3.Error: for any problem; callers wrap this in ``translate_errors``.
        RegistryError: if the file was migrated by a newer tffprod.
    """
    from sqlite_utils import Database

    from tffprod.registry.migrations import MIGRATIONS, unknown_migrations

    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    try:
        db = Database(conn, execute_plugins=False)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        if path != ":memory:":
            db.enable_wal()
        if MIGRATIONS.pending(db):
            with write_transaction(db):
                MIGRATIONS.apply(db)
        unknown = unknown_migrations(db)
        if unknown:
            raise RegistryError(
                f"registry {path}: written by a newer tffprod (unknown migrations: {', '.join(unknown)})"
            )
    except BaseException:
        conn.close()
        raise
    return db


def first_row(db: Database, sql: str, params: list[Any]) -> dict[str, Any] | None:
    """Returns the first row of a query as a dict, or None; the cursor is fully read."""
    rows = list(db.query(sql, params))
    return rows[0] if rows else None
