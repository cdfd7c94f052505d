"""The registry schema, as ``sqlite_utils`` migrations.

Each migration runs in a transaction together with the record of it having
been applied (in ``_sqlite_migrations``, set ``tffprod.registry``).

Never edit a migration that has been released: databases in the field have
already applied it and will not run it again. Change the schema by adding a
new decorated function below the last one.

JSON columns hold text (see ``tffprod.registry.codec``); timestamps are
ISO-8601 UTC strings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlite_utils import Migrations

if TYPE_CHECKING:
    from sqlite_utils import Database

MIGRATIONS = Migrations("tffprod.registry")
_KNOWN: list[str] = []


def migration(fn: Callable[[Database], None]) -> Callable[[Database], None]:
    """Registers ``fn`` as the next migration (and remembers its name)."""
    _KNOWN.append(fn.__name__)
    return MIGRATIONS()(fn)


_INITIAL_SCHEMA = [
    """
    CREATE TABLE sites (
        name TEXT PRIMARY KEY,
        address TEXT,
        info TEXT NOT NULL DEFAULT '{}',          -- JSON object
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE datasets (
        site TEXT NOT NULL REFERENCES sites(name),
        name TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1),
        path TEXT NOT NULL,
        format TEXT NOT NULL,
        schema TEXT NOT NULL,                     -- JSON object
        num_examples INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        registered_at TEXT NOT NULL,
        PRIMARY KEY (site, name, version)
    )
    """,
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('pending', 'running', 'finished', 'failed', 'cancelled')),
        backend TEXT NOT NULL,
        spec TEXT NOT NULL,                       -- JSON object
        task TEXT NOT NULL,                       -- JSON object
        datasets TEXT NOT NULL,                   -- JSON list of dataset refs
        rounds_planned INTEGER NOT NULL,
        rounds_completed INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        error TEXT
    )
    """,
    "CREATE INDEX sessions_by_created_at ON sessions (created_at)",
    """
    CREATE TABLE rounds (
        session_id TEXT NOT NULL REFERENCES sessions(id),
        round_num INTEGER NOT NULL CHECK (round_num >= 1),
        metrics TEXT NOT NULL,                    -- JSON object
        participants TEXT NOT NULL,               -- JSON list of objects
        duration_s REAL NOT NULL,
        epsilon REAL,
        recorded_at TEXT NOT NULL,
        PRIMARY KEY (session_id, round_num)
    )
    """,
    """
    CREATE TABLE model_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1),
        session_id TEXT NOT NULL REFERENCES sessions(id),
        artifact_path TEXT NOT NULL,
        metrics TEXT NOT NULL,                    -- JSON object
        dp TEXT NOT NULL,                         -- JSON object
        epsilon REAL,
        delta REAL,
        datasets TEXT NOT NULL,                   -- JSON list of dataset refs
        task TEXT NOT NULL,                       -- JSON object
        created_at TEXT NOT NULL,
        PRIMARY KEY (name, version)
    )
    """,
    """
    CREATE TABLE evaluations (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        dataset TEXT NOT NULL,
        metrics TEXT NOT NULL,                    -- JSON object
        session_id TEXT REFERENCES sessions(id),
        created_at TEXT NOT NULL,
        FOREIGN KEY (model, version) REFERENCES model_versions(name, version)
    )
    """,
    "CREATE INDEX evaluations_by_model ON evaluations (model, version)",
]


@migration
def m001_initial(db: Database) -> None:
    """Creates every table of the first registry schema."""
    for statement in _INITIAL_SCHEMA:
        db.execute(statement)


_PRIVACY_SCHEMA = [
    """
    CREATE TABLE budgets (
        site TEXT NOT NULL,
        name TEXT NOT NULL,
        epsilon REAL NOT NULL CHECK (epsilon > 0),
        delta REAL NOT NULL CHECK (delta > 0 AND delta < 1),
        source TEXT NOT NULL CHECK (source IN ('site', 'coordinator')),
        updated_at TEXT NOT NULL,
        PRIMARY KEY (site, name)                  -- a dataset identity, not a version
    )
    """,
    """
    CREATE TABLE privacy_spend (
        session_id TEXT NOT NULL REFERENCES sessions(id),
        site TEXT NOT NULL,
        name TEXT NOT NULL,
        epsilon REAL NOT NULL CHECK (epsilon >= 0),   -- this session's total so far
        delta REAL NOT NULL CHECK (delta >= 0),
        rounds INTEGER NOT NULL CHECK (rounds >= 0),
        updated_at TEXT NOT NULL,
        PRIMARY KEY (session_id, site, name)
    )
    """,
    "CREATE INDEX privacy_spend_by_dataset ON privacy_spend (site, name)",
]


@migration
def m002_privacy_budgets(db: Database) -> None:
    """Adds privacy budgets per dataset identity and each session's spend against them."""
    for statement in _PRIVACY_SCHEMA:
        db.execute(statement)


_CLIENTS_SCHEMA = [
    "ALTER TABLE datasets ADD COLUMN client_id TEXT",  # the client-id column; NULL = site-level
    "ALTER TABLE datasets ADD COLUMN num_clients INTEGER",  # distinct clients (1 when site-level)
    "ALTER TABLE rounds ADD COLUMN sampling_rate REAL",  # a client's chance to take part
    "ALTER TABLE rounds ADD COLUMN clients INTEGER",  # clients that really took part
    "ALTER TABLE rounds ADD COLUMN epsilon_pld REAL",  # epsilon so far by PLD, when computed
    "ALTER TABLE sessions ADD COLUMN privacy TEXT",  # JSON: unit of privacy, sampling, accountants
]


@migration
def m003_clients(db: Database) -> None:
    """Adds client-id columns to datasets, sampling and participation to rounds, and a session's
    unit of privacy."""
    for statement in _CLIENTS_SCHEMA:
        db.execute(statement)


def unknown_migrations(db: Database) -> list[str]:
    """Names of applied migrations that this version of tffprod does not know.

    A non-empty answer means a newer tffprod has changed the schema.
    """
    return [m.name for m in MIGRATIONS.applied(db) if m.name not in _KNOWN]
