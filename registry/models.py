"""Model versions (trained artifacts with lineage), their aliases, access lists and evaluations.

Versions count from 1 per model name. A version records the session that
trained it, the datasets, task and DP settings it came from, its privacy cost
and its full lineage (``tffprod.models.lineage``); evaluations attach metrics on a
dataset (or overall, over several) to one version.

A model ref is ``NAME`` (the latest version), ``NAME:VERSION`` or ``NAME@ALIAS``;
an alias names one version of its model at a time. A version's access list holds
the principals allowed to receive it: ``site:NAME`` and ``federation:NAME``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from tffprod.errors import NotFoundError, RegistryError, SpecError
from tffprod.registry.codec import check_name, from_json, parse_model_ref, to_json, utc_now
from tffprod.registry.connection import first_row, write_transaction
from tffprod.registry.protocol import ModelVersionRow
from tffprod.registry.sessions import mark_finished, require_session

if TYPE_CHECKING:
    from sqlite_utils import Database

_JSON_COLUMNS = ("metrics", "dp", "datasets", "task", "access")
PRINCIPAL_KINDS = ("site", "federation")


def _model_version(db: Database, row: dict[str, Any]) -> ModelVersionRow:
    out = {**row, **{key: from_json(row[key]) for key in _JSON_COLUMNS}}
    out["lineage"] = from_json(row["lineage"]) if row.get("lineage") else {}
    out["aliases"] = [r["alias"] for r in db.query(
        "SELECT alias FROM model_aliases WHERE name = ? AND version = ? ORDER BY alias", [row["name"], row["version"]])]
    return cast(ModelVersionRow, out)  # SELECT * of a migrated model_versions table, plus its aliases


def check_principal(principal: str) -> str:
    """Checks ``site:NAME`` or ``federation:NAME`` and returns it.

    Raises:
        SpecError: if it is of neither form.
    """
    kind, sep, name = principal.partition(":") if isinstance(principal, str) else ("", "", "")
    if not sep or kind not in PRINCIPAL_KINDS:
        raise SpecError(f"access principal {principal!r} must be 'site:NAME' or 'federation:NAME'")
    check_name(kind, name)
    return principal


def _default_access(db: Database, session_id: str, datasets: list[str]) -> list[str]:
    """The sites whose datasets trained the version, and the session's federation if it has one."""
    principals = [f"site:{site}" for site in sorted({ref.split("/", 1)[0] for ref in datasets})]
    session = first_row(db, "SELECT spec FROM sessions WHERE id = ?", [session_id])
    federation = from_json(session["spec"]).get("federation") if session else None
    return principals + ([f"federation:{federation}"] if federation else [])


def _evaluation(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "metrics": from_json(row["metrics"])}


def add_model_version(db: Database, **fields: Any) -> ModelVersionRow:
    """Adds version ``latest + 1`` of a model; see ``Registry.add_model_version``."""
    name = check_name("model", fields["name"])
    with write_transaction(db):
        require_session(db, fields["session_id"])
        if fields.get("finishes_session"):
            _refuse_a_second_version(db, fields["session_id"])
        latest = first_row(db, "SELECT max(version) AS v FROM model_versions WHERE name = ?", [name])
        version = (latest["v"] if latest and latest["v"] else 0) + 1
        access = fields.get("access")
        access = _default_access(db, fields["session_id"], list(fields["datasets"])) if access is None \
            else sorted(dict.fromkeys(check_principal(p) for p in access))
        db.execute(
            "INSERT INTO model_versions (name, version, session_id, artifact_path, metrics, dp, epsilon,"
            " delta, datasets, task, created_at, lineage, access) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                to_json(fields["lineage"]) if fields.get("lineage") is not None else None,
                to_json(access),
            ],
        )
        for evaluation in fields.get("evaluations") or ():
            _insert_evaluation(db, model=name, version=version, session_id=fields["session_id"], **evaluation)
        if fields.get("finishes_session"):
            mark_finished(db, fields["session_id"], "finished", None)
    return get_model_version(db, f"{name}:{version}")


def _refuse_a_second_version(db: Database, session_id: str) -> None:
    row = first_row(db, "SELECT name, version FROM model_versions WHERE session_id = ? LIMIT 1", [session_id])
    if row is not None:
        raise RegistryError(f"session {session_id} already produced model version {row['name']}:{row['version']}")


def resolve_model_ref(db: Database, ref: str) -> tuple[str, int | None]:
    """Splits ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` into ``(name, version)``; None = latest.

    Raises:
        NotFoundError: if the ref is malformed or the alias is not set.
    """
    if isinstance(ref, str) and "@" in ref:
        name, _, alias = ref.partition("@")
        parse_model_ref(name)
        row = first_row(db, "SELECT version FROM model_aliases WHERE name = ? AND alias = ?", [name, alias])
        if row is None:
            raise NotFoundError(f"model {name!r} has no alias {alias!r} (set one with 'tffprod model alias')")
        return name, row["version"]
    return parse_model_ref(ref)


def get_model_version(db: Database, ref: str) -> ModelVersionRow:
    """Returns the version ``NAME:VERSION`` or ``NAME@ALIAS`` names, or the latest for ``NAME``."""
    name, version = resolve_model_ref(db, ref)
    params: list[Any]
    if version is None:
        sql, params = "SELECT * FROM model_versions WHERE name = ? ORDER BY version DESC LIMIT 1", [name]
    else:
        sql, params = "SELECT * FROM model_versions WHERE name = ? AND version = ?", [name, version]
    row = first_row(db, sql, params)
    if row is None:
        raise NotFoundError(f"unknown model version {ref!r}")
    return _model_version(db, row)


def list_model_versions(db: Database, name: str | None) -> list[ModelVersionRow]:
    """Returns every version (of one model if given), sorted by name then version."""
    where, params = ("WHERE name = ?", [name]) if name is not None else ("", [])
    sql = f"SELECT * FROM model_versions {where} ORDER BY name, version"
    return [_model_version(db, row) for row in db.query(sql, params)]


def add_evaluation(db: Database, **fields: Any) -> dict[str, Any]:
    """Records metrics of one model version on one dataset."""
    with write_transaction(db):
        get_model_version(db, f"{fields['model']}:{int(fields['version'])}")
        if fields["session_id"] is not None:
            require_session(db, fields["session_id"])
        row = _insert_evaluation(db, **fields)
    return _evaluation(row)


def _insert_evaluation(db: Database, *, model: str, version: int, dataset: str, metrics: dict,
                       session_id: str | None, kind: str = "dataset") -> dict[str, Any]:
    if kind not in ("dataset", "overall"):
        raise ValueError(f"evaluation kind must be 'dataset' or 'overall', got {kind!r}")
    cursor = db.execute(
        "INSERT INTO evaluations (model, version, dataset, metrics, session_id, created_at, kind)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [model, int(version), dataset, to_json(metrics), session_id, utc_now(), kind],
    )
    row = first_row(db, "SELECT * FROM evaluations WHERE id = ?", [cursor.lastrowid])
    assert row is not None  # inserted just above, in the same transaction
    return row


def list_evaluations(db: Database, model: str, version: int | None,
                     kind: str | None = "dataset") -> list[dict[str, Any]]:
    """Returns the evaluations of a model (or one version), oldest first; only ``kind`` unless None.

    Raises:
        NotFoundError: if the model (or that version) was never registered.
    """
    get_model_version(db, model if version is None else f"{model}:{version}")
    sql = "SELECT * FROM evaluations WHERE model = ?"
    params: list[Any] = [model]
    if version is not None:
        sql += " AND version = ?"
        params.append(int(version))
    if kind is not None:
        sql += " AND kind = ?"
        params.append(kind)
    return [_evaluation(row) for row in db.query(sql + " ORDER BY created_at, id", params)]


def set_alias(db: Database, ref: str, alias: str) -> ModelVersionRow:
    """Points ``alias`` of the model ``ref`` names at that version (moving it if set elsewhere).

    Raises:
        NotFoundError: if the version is unknown.
        SpecError: if ``alias`` is not a valid name or is all digits (it would read as a version).
    """
    check_name("alias", alias)
    if alias.isdigit():
        raise SpecError(f"alias {alias!r} must not be a number (NAME:{alias} already means version {alias})")
    with write_transaction(db):
        version = get_model_version(db, ref)
        db.execute(
            "INSERT INTO model_aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
            [version["name"], alias, version["version"], utc_now()],
        )
    return get_model_version(db, f"{version['name']}:{version['version']}")


def remove_alias(db: Database, name: str, alias: str) -> ModelVersionRow:
    """Removes ``alias`` of model ``name``; returns the version it named.

    Raises:
        NotFoundError: if the model has no such alias.
    """
    with write_transaction(db):
        version = get_model_version(db, f"{name}@{alias}")
        db.execute("DELETE FROM model_aliases WHERE name = ? AND alias = ?", [name, alias])
    return get_model_version(db, f"{version['name']}:{version['version']}")


def list_aliases(db: Database, name: str | None = None) -> dict[str, dict[str, int]]:
    """``{model: {alias: version}}`` (of one model if given)."""
    where, params = ("WHERE name = ?", [name]) if name is not None else ("", [])
    out: dict[str, dict[str, int]] = {}
    for row in db.query(f"SELECT name, alias, version FROM model_aliases {where} ORDER BY name, alias", params):
        out.setdefault(row["name"], {})[row["alias"]] = row["version"]
    return out


def set_access(db: Database, ref: str, allow: list[str], revoke: list[str]) -> ModelVersionRow:
    """Adds the ``allow`` principals to a version's access list and removes the ``revoke`` ones.

    Raises:
        NotFoundError: if the version is unknown.
        SpecError: if a principal is malformed.
    """
    allow = [check_principal(p) for p in allow]
    revoke = [check_principal(p) for p in revoke]
    with write_transaction(db):
        version = get_model_version(db, ref)
        access = sorted((set(version["access"]) | set(allow)) - set(revoke))
        db.execute("UPDATE model_versions SET access = ? WHERE name = ? AND version = ?",
                   [to_json(access), version["name"], version["version"]])
    return get_model_version(db, f"{version['name']}:{version['version']}")


def site_allowed(db: Database, access: list[str], site: str) -> bool:
    """Whether ``site`` may receive a version with this access list: it is listed as
    ``site:SITE``, or belongs to a listed ``federation:NAME`` (once federations exist)."""
    if f"site:{site}" in access:
        return True
    federations = [p.partition(":")[2] for p in access if p.startswith("federation:")]
    if not federations or first_row(
            db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'federation_sites'", []) is None:
        return False
    marks = ", ".join("?" for _ in federations)
    return first_row(db, f"SELECT site FROM federation_sites WHERE site = ? AND federation IN ({marks})",
                     [site, *federations]) is not None
