"""Model versions (trained artifacts with lineage) and their evaluations.

Versions count from 1 per model name. A version records the session that
trained it, the datasets, task and DP settings it came from, and its privacy
cost; evaluations attach metrics on a dataset to one version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tffprod.errors import NotFoundError
from tffprod.registry.codec import check_name, from_json, parse_model_ref, to_json, utc_now
from tffprod.registry.connection import first_row, write_transaction
from tffprod.registry.sessions import require_session

if TYPE_CHECKING:
    from sqlite_utils import Database

_JSON_COLUMNS = ("metrics", "dp", "datasets", "task")


def _model_version(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, **{key: from_json(row[key]) for key in _JSON_COLUMNS}}


def _evaluation(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "metrics": from_json(row["metrics"])}


def add_model_version(db: Database, **fields: Any) -> dict[str, Any]:
    """Adds version ``latest + 1`` of a model; see ``Registry.add_model_version``."""
    name = check_name("model", fields["name"])
    with write_transaction(db):
        require_session(db, fields["session_id"])
        latest = first_row(db, "SELECT max(version) AS v FROM model_versions WHERE name = ?", [name])
        version = (latest["v"] if latest and latest["v"] else 0) + 1
        db.execute(
            "INSERT INTO model_versions (name, version, session_id, artifact_path, metrics, dp, epsilon,"
            " delta, datasets, task, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                name,
                version,
                fields["session_id"],
                str(fields["artifact_path"]),
                to_json(fields["metrics"]),
                to_json(fields["dp"]),
                fields["epsilon"],
                fields["delta"],
                to_json(list(fields["datasets"])),
                to_json(fields["task"]),
                utc_now(),
            ],
        )
    return get_model_version(db, f"{name}:{version}")


def get_model_version(db: Database, ref: str) -> dict[str, Any]:
    """Returns the version ``NAME:VERSION`` names, or the latest for ``NAME``."""
    name, version = parse_model_ref(ref)
    if version is None:
        sql, params = "SELECT * FROM model_versions WHERE name = ? ORDER BY version DESC LIMIT 1", [name]
    else:
        sql, params = "SELECT * FROM model_versions WHERE name = ? AND version = ?", [name, version]
    row = first_row(db, sql, params)
    if row is None:
        raise NotFoundError(f"unknown model version {ref!r}")
    return _model_version(row)


def list_model_versions(db: Database, name: str | None) -> list[dict[str, Any]]:
    """Returns every version (of one model if given), sorted by name then version."""
    where, params = ("WHERE name = ?", [name]) if name is not None else ("", [])
    sql = f"SELECT * FROM model_versions {where} ORDER BY name, version"
    return [_model_version(row) for row in db.query(sql, params)]


def add_evaluation(db: Database, **fields: Any) -> dict[str, Any]:
    """Records metrics of one model version on one dataset."""
    model, version = fields["model"], int(fields["version"])
    with write_transaction(db):
        get_model_version(db, f"{model}:{version}")
        if fields["session_id"] is not None:
            require_session(db, fields["session_id"])
        cursor = db.execute(
            "INSERT INTO evaluations (model, version, dataset, metrics, session_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [model, version, fields["dataset"], to_json(fields["metrics"]), fields["session_id"], utc_now()],
        )
        row = first_row(db, "SELECT * FROM evaluations WHERE id = ?", [cursor.lastrowid])
    assert row is not None  # inserted just above, in the same transaction
    return _evaluation(row)


def list_evaluations(db: Database, model: str, version: int | None) -> list[dict[str, Any]]:
    """Returns the evaluations of a model (or one version), oldest first.

    Raises:
        NotFoundError: if the model (or that version) was never registered.
    """
    get_model_version(db, model if version is None else f"{model}:{version}")
    sql = "SELECT * FROM evaluations WHERE model = ?"
    params: list[Any] = [model]
    if version is not None:
        sql += " AND version = ?"
        params.append(int(version))
    return [_evaluation(row) for row in db.query(sql + " ORDER BY created_at, id", params)]
