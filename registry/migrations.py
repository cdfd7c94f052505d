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


_AUDIT_SCHEMA = [
    """
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,                  -- 1, 2, ...: the chain's order
        at TEXT NOT NULL,
        actor TEXT NOT NULL,                      -- the OS user, unless the caller named one
        action TEXT NOT NULL,                     -- e.g. 'dataset.register', 'session.run'
        subject TEXT NOT NULL,                    -- what it acted on
        details TEXT NOT NULL,                    -- JSON object
        prev_hash TEXT NOT NULL,                  -- the previous entry's hash (64 zeros for the first)
        hash TEXT NOT NULL                        -- see tffprod.registry.audit.entry_hash
    )
    """,
    """
    CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),    -- one row: the last entry, so truncation shows
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
]


@migration
def m004_audit_chain(db: Database) -> None:
    """Adds the coordinator's hash-chained audit log of operator actions and its head."""
    for statement in _AUDIT_SCHEMA:
        db.execute(statement)


_MODEL_REGISTRY_SCHEMA = [
    "ALTER TABLE model_versions ADD COLUMN lineage TEXT",  # JSON object; NULL for versions made before m005
    "ALTER TABLE model_versions ADD COLUMN access TEXT NOT NULL DEFAULT '[]'",  # JSON list of principals
    """
    CREATE TABLE model_aliases (
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (name, alias),                -- one version per alias per model
        FOREIGN KEY (name, version) REFERENCES model_versions(name, version)
    )
    """,
    # 'dataset': metrics on one dataset; 'overall': merged over the datasets listed in `dataset`.
    "ALTER TABLE evaluations ADD COLUMN kind TEXT NOT NULL DEFAULT 'dataset'"
    " CHECK (kind IN ('dataset', 'overall'))",
]


@migration
def m005_model_registry(db: Database) -> None:
    """Adds model aliases, a version's lineage and access list, and overall evaluations.

    Existing versions may be received by the sites whose datasets trained them.
    """
    import json

    for statement in _MODEL_REGISTRY_SCHEMA:
        db.execute(statement)
    for name, version, datasets in db.execute("SELECT name, version, datasets FROM model_versions").fetchall():
        sites = sorted({ref.split("/", 1)[0] for ref in json.loads(datasets)})
        db.execute("UPDATE model_versions SET access = ? WHERE name = ? AND version = ?",
                   [json.dumps([f"site:{site}" for site in sites]), name, version])



_M006_FEDERATIONS_SQL = [  # as released: never edit (see the module docstring)
    """
    CREATE TABLE federations (
        name TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE federation_sites (
        federation TEXT NOT NULL REFERENCES federations(name),
        site TEXT NOT NULL REFERENCES sites(name),
        added_at TEXT NOT NULL,
        PRIMARY KEY (federation, site)
    )
    """,
]


@migration
def m006_federations(db: Database) -> None:
    """Federations: named groups of sites (``tffprod.registry.federations``)."""
    for statement in _M006_FEDERATIONS_SQL:
        db.execute(statement)


@migration
def m007_resumable_sessions(db: Database) -> None:
    """Crash-safe rounds: each round's checkpoint, the coordinator that owns a session, cancel requests."""
    db.execute("ALTER TABLE rounds ADD COLUMN checkpoint TEXT")  # path of the server state after the round
    db.execute("ALTER TABLE rounds ADD COLUMN checkpoint_sha256 TEXT")
    db.execute("ALTER TABLE sessions ADD COLUMN coordinator TEXT")  # JSON {"host", "pid"} of its process
    db.execute("ALTER TABLE sessions ADD COLUMN cancel_requested_at TEXT")
    db.execute("ALTER TABLE sessions ADD COLUMN resumed INTEGER NOT NULL DEFAULT 0")


@migration
def m008_evaluation_spend(db: Database) -> None:
    """What noised evaluation releases cost each evaluation dataset: a session's, or an evaluation plan's
    (``tffprod eval --plan``) (``privacy.EVAL_SPEND_KEYS``)."""
    db.execute("""
    CREATE TABLE evaluation_spend (
        session_id TEXT REFERENCES sessions(id),      -- the session that evaluated, or
        plan_id TEXT,                                 -- the evaluation plan released
        site TEXT NOT NULL,
        name TEXT NOT NULL,
        epsilon REAL NOT NULL CHECK (epsilon >= 0),   -- the releases' total
        delta REAL NOT NULL CHECK (delta >= 0),
        releases INTEGER NOT NULL CHECK (releases >= 1),
        noise_multiplier REAL NOT NULL CHECK (noise_multiplier > 0),
        recorded_at TEXT NOT NULL,
        CHECK ((session_id IS NULL) <> (plan_id IS NULL))
    )
    """)
    db.execute("CREATE UNIQUE INDEX evaluation_spend_once ON evaluation_spend"
               " (coalesce(session_id, ''), coalesce(plan_id, ''), site, name)")
    db.execute("CREATE INDEX evaluation_spend_by_dataset ON evaluation_spend (site, name)")


def unknown_migrations(db: Database) -> list[str]:
    """Names of applied migrations that this version of tffprod does not know.

    A non-empty answer means a newer tffprod has changed the schema.
    """
    return [m.name for m in MIGRATIONS.applied(db) if m.name not in _KNOWN]
