"""Federations: named groups of sites that train together.

A session belongs to at most one federation and may only use that federation's
sites; a site says in its own config which federations it serves (the gateway
checks it). Here: the coordinator's record of who belongs to which federation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tffprod.errors import NotFoundError
from tffprod.registry.codec import utc_now
from tffprod.registry.connection import write_transaction
from tffprod.config.names import federation_name as check_name

if TYPE_CHECKING:
    from sqlite_utils import Database


def _row(db: Database, name: str) -> dict[str, Any]:
    rows = list(db.query("SELECT name, created_at FROM federations WHERE name = ?", [name]))
    if not rows:
        raise NotFoundError(f"no federation named '{name}' (create it with 'tffprod federation create {name}')")
    federation = dict(rows[0])
    federation["sites"] = [r["site"] for r in db.query(
        "SELECT site FROM federation_sites WHERE federation = ? ORDER BY site", [name])]
    return federation


def create(db: Database, name: str) -> dict[str, Any]:
    """Create federation ``name``; an existing one is returned unchanged."""
    check_name(name)
    with write_transaction(db):
        db.execute("INSERT OR IGNORE INTO federations (name, created_at) VALUES (?, ?)", [name, utc_now()])
    return _row(db, name)


def get(db: Database, name: str) -> dict[str, Any]:
    """``{"name", "created_at", "sites"}``; NotFoundError if unknown."""
    return _row(db, check_name(name))


def list_all(db: Database) -> list[dict[str, Any]]:
    """Every federation with its sites, by name."""
    return [_row(db, r["name"]) for r in db.query("SELECT name FROM federations ORDER BY name")]


def add_site(db: Database, name: str, site: str) -> dict[str, Any]:
    """Add a registered site to federation ``name`` (idempotent).

    Raises:
        NotFoundError: the federation or the site is unknown.
    """
    _row(db, check_name(name))
    if not list(db.query("SELECT name FROM sites WHERE name = ?", [site])):
        raise NotFoundError(f"no site named '{site}' (add it with 'tffprod site add')")
    with write_transaction(db):
        db.execute("INSERT OR IGNORE INTO federation_sites (federation, site, added_at) VALUES (?, ?, ?)",
                   [name, site, utc_now()])
    return _row(db, name)


def remove_site(db: Database, name: str, site: str) -> dict[str, Any]:
    """Remove ``site`` from federation ``name``; NotFoundError if it is not a member."""
    federation = _row(db, check_name(name))
    if site not in federation["sites"]:
        raise NotFoundError(f"site '{site}' is not in federation '{name}'")
    with write_transaction(db):
        db.execute("DELETE FROM federation_sites WHERE federation = ? AND site = ?", [name, site])
    return _row(db, name)
