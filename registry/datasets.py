"""Sites and their versioned datasets.

Functions here take an open ``sqlite_utils.Database``; ``Registry`` wraps them
with error translation. A dataset version is immutable: registering changed
content, schema or path adds version ``latest + 1``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from tffprod.errors import NotFoundError
from tffprod.registry.codec import (
    check_name,
    dataset_ref,
    from_json,
    parse_dataset_ref,
    to_json,
    utc_now,
)
from tffprod.registry.connection import first_row, write_transaction
from tffprod.registry.protocol import DatasetRow, SiteRow

if TYPE_CHECKING:
    from sqlite_utils import Database


def _site(row: dict[str, Any]) -> SiteRow:
    # SELECT * of the sites table: every SiteRow key (info decoded).
    return cast(SiteRow, {**row, "info": from_json(row["info"])})


def _dataset(row: dict[str, Any]) -> DatasetRow:
    ref = dataset_ref(row["site"], row["name"], row["version"])
    # SELECT * of a migrated datasets table: every DatasetRow key (schema decoded).
    # Versions registered before client ids existed are one client each (site-level).
    return cast(DatasetRow, {"ref": ref, **row, "schema": from_json(row["schema"]),
                             "num_clients": row.get("num_clients") or 1})


def _ensure_site(db: Database, name: str, now: str) -> None:
    db.execute(
        "INSERT INTO sites (name, created_at, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
        [name, now, now],
    )


def add_site(db: Database, name: str, address: str | None, info: dict | None) -> SiteRow:
    """Inserts or updates a site; ``None`` arguments keep the stored values."""
    check_name("site", name)
    now = utc_now()
    with write_transaction(db):
        _ensure_site(db, name, now)
        db.execute(
            "UPDATE sites SET address = coalesce(?, address), info = coalesce(?, info), updated_at = ?"
            " WHERE name = ?",
            [address, None if info is None else to_json(info), now, name],
        )
    return get_site(db, name)


def get_site(db: Database, name: str) -> SiteRow:
    """Returns one site. Raises NotFoundError if unknown."""
    row = first_row(db, "SELECT * FROM sites WHERE name = ?", [name])
    if row is None:
        raise NotFoundError(f"unknown site {name!r}")
    return _site(row)


def list_sites(db: Database) -> list[SiteRow]:
    """Returns every site, sorted by name."""
    return [_site(row) for row in db.query("SELECT * FROM sites ORDER BY name")]


def _latest(db: Database, site: str, name: str) -> dict[str, Any] | None:
    sql = "SELECT * FROM datasets WHERE site = ? AND name = ? ORDER BY version DESC LIMIT 1"
    return first_row(db, sql, [site, name])


def add_dataset(db: Database, **fields: Any) -> DatasetRow:
    """Registers a dataset version; see ``Registry.add_dataset``."""
    site, name = check_name("site", fields["site"]), check_name("dataset", fields["name"])
    now = utc_now()
    with write_transaction(db):
        latest = _latest(db, site, name)
        if latest is not None and (
            latest["content_hash"] == fields["content_hash"]
            and from_json(latest["schema"]) == fields["schema"]
            and latest["path"] == fields["path"]
            and latest["client_id"] == fields.get("client_id")
            and (fields.get("client_id") is None or latest["num_clients"] == fields.get("num_clients"))
        ):
            return _dataset(latest)
        _ensure_site(db, site, now)
        version = 1 if latest is None else latest["version"] + 1
        db.execute(
            "INSERT INTO datasets (site, name, version, path, format, schema, num_examples,"
            " content_hash, registered_at, client_id, num_clients) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                site,
                name,
                version,
                fields["path"],
                fields["format"],
                to_json(fields["schema"]),
                int(fields["num_examples"]),
                fields["content_hash"],
                now,
                fields.get("client_id"),
                int(fields.get("num_clients") or 1),
            ],
        )
    return get_dataset(db, dataset_ref(site, name, version))


def get_dataset(db: Database, ref: str) -> DatasetRow:
    """Returns the dataset version ``ref`` names (the latest without ``:N``)."""
    site, name, version = parse_dataset_ref(ref)
    if version is None:
        row = _latest(db, site, name)
    else:
        sql = "SELECT * FROM datasets WHERE site = ? AND name = ? AND version = ?"
        row = first_row(db, sql, [site, name, version])
    if row is None:
        raise NotFoundError(f"unknown dataset {ref!r}")
    return _dataset(row)


def list_datasets(db: Database, site: str | None) -> list[DatasetRow]:
    """Returns the latest version of each dataset (of one site if given), sorted by ref."""
    sql = (
        "SELECT d.* FROM datasets d WHERE d.version = "
        "(SELECT max(version) FROM datasets WHERE site = d.site AND name = d.name)"
    )
    params: list[Any] = []
    if site is not None:
        sql += " AND d.site = ?"
        params.append(site)
    return sorted((_dataset(row) for row in db.query(sql, params)), key=lambda d: d["ref"])


def list_versions(db: Database, ref: str) -> list[dict[str, Any]]:
    """Every version of the dataset ``ref`` names (any ``:N`` is ignored), oldest first, each with
    ``sessions``: ``{"id", "status"}`` of each session that used exactly that version for training."""
    site, name, _ = parse_dataset_ref(ref)
    rows: list[dict[str, Any]] = [dict(_dataset(r)) for r in db.query(  # each gains "sessions" below
        "SELECT * FROM datasets WHERE site = ? AND name = ? ORDER BY version", [site, name])]
    if not rows:
        raise NotFoundError(f"unknown dataset {ref!r}")
    used: dict[str, list[dict[str, str]]] = {row["ref"]: [] for row in rows}
    for session in db.query("SELECT id, status, datasets FROM sessions ORDER BY created_at"):
        for ref_used in set(from_json(session["datasets"])) & set(used):
            used[ref_used].append({"id": session["id"], "status": session["status"]})
    for row in rows:
        row["sessions"] = used[row["ref"]]
    return rows
