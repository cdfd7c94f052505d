"""Privacy budgets per dataset identity, and what sessions have spent against them.

A budget is an ``(epsilon, delta)`` pair for a dataset *identity* ``(site,
name)``, not for a version: registering a new version of the same data must not
reset what may still be spent on it. A budget comes from the site's own config
(``source="site"``, mirrored by ``sync_site``) or from the coordinator
(``source="coordinator"``).

Spend is recorded per session and dataset identity, together with the round
that caused it (see ``sessions.record_round``). Each spend row holds the
session's *cumulative* spend so far, so a later round replaces it.

A dataset with a client-id column protects each client (customer, patient);
one without protects the dataset as a whole (site-level): the report says which
(``unit``). Spend is accounted with RDP (the budget's currency); where sessions
also computed a PLD epsilon it is reported beside it (``epsilon_pld``).

A session's noised evaluation releases (``[dp] eval_noise_multiplier``) are charged
too, to each evaluation dataset they read (``record_evaluation_spend``); the report
lists them apart from training and counts them in ``spent``.

Sessions compose by basic composition: the total spent on a dataset is the sum
of the epsilons and the sum of the deltas of every session that used it. This
is an upper bound; it never understates what was spent.

Functions here take an open ``sqlite_utils.Database``; ``Registry`` wraps them
with error translation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tffprod.errors import NotFoundError
from tffprod.registry.codec import check_name, utc_now
from tffprod.registry.connection import first_row, write_transaction

if TYPE_CHECKING:
    from sqlite_utils import Database

SOURCES = ("site", "coordinator")
SPEND_KEYS = ("site", "name", "epsilon", "delta", "rounds")
EVAL_SPEND_KEYS = ("site", "name", "epsilon", "delta", "releases", "noise_multiplier")


def _number(what: str, value: Any) -> float:
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int beyond float's range
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return number


def _spent(what: str, value: Any) -> float:
    # Spend may be infinite (an accountant's honest answer for unbounded loss); never NaN.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{what} must be a number, got {value!r}")
    return float(value)


def check_budget(epsilon: Any, delta: Any) -> tuple[float, float]:
    """Checks a budget's values.

    Returns:
        ``(epsilon, delta)`` as floats.

    Raises:
        ValueError: unless ``epsilon > 0`` and ``0 < delta < 1`` (finite numbers).
    """
    epsilon, delta = _number("budget epsilon", epsilon), _number("budget delta", delta)
    if epsilon <= 0:
        raise ValueError(f"budget epsilon must be > 0, got {epsilon!r}")
    if not 0 < delta < 1:
        raise ValueError(f"budget delta must be > 0 and < 1, got {delta!r}")
    return epsilon, delta


def unit_of_privacy(client_id: str | None) -> str:
    """What one unit of privacy is for a dataset with (or without) a client-id column."""
    return f"client (column {client_id})" if client_id else "site dataset (site-level)"


def _budget(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in ("site", "name", "epsilon", "delta", "source", "updated_at")}


def set_budget(db: Database, site: str, name: str, *, epsilon: float, delta: float, source: str) -> dict[str, Any]:
    """Sets (inserts or replaces) the budget of dataset ``site/name``; see ``Registry.set_budget``."""
    check_name("site", site)
    check_name("dataset", name)
    epsilon, delta = check_budget(epsilon, delta)
    if source not in SOURCES:
        raise ValueError(f"budget source must be one of {', '.join(SOURCES)}, got {source!r}")
    with write_transaction(db):
        db.execute(
            "INSERT INTO budgets (site, name, epsilon, delta, source, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (site, name) DO UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta,"
            " source = excluded.source, updated_at = excluded.updated_at",
            [site, name, epsilon, delta, source, utc_now()],
        )
    budget = get_budget(db, site, name)
    assert budget is not None  # written just above
    return budget


def get_budget(db: Database, site: str, name: str) -> dict[str, Any] | None:
    """Returns the budget of ``site/name``, or None if it has none."""
    row = first_row(db, "SELECT * FROM budgets WHERE site = ? AND name = ?", [site, name])
    return None if row is None else _budget(row)


def check_spend(spend: Iterable[dict] | None) -> list[dict[str, Any]]:
    """Checks the ``spend`` items given to ``record_round`` before anything is written.

    Returns:
        The items with exactly the keys site, name, epsilon, delta, rounds.

    Raises:
        ValueError: an item misses or has extra keys, a value is negative or not
            a number (NaN; infinity is allowed: an accountant's answer for
            unbounded loss), ``rounds`` is not an integer, or a dataset appears twice.
    """
    if spend is None:
        return []
    out, seen = [], set()
    for item in spend:
        if not isinstance(item, dict) or set(item) != set(SPEND_KEYS):
            raise ValueError(f"a spend item needs exactly the keys {', '.join(SPEND_KEYS)}, got {item!r}")
        site, name = item["site"], item["name"]
        if not isinstance(site, str) or not isinstance(name, str) or not site or not name:
            raise ValueError(f"spend site and name must be non-empty strings, got {item!r}")
        if (site, name) in seen:
            raise ValueError(f"spend lists dataset {site}/{name} twice")
        seen.add((site, name))
        epsilon = _spent(f"spend epsilon of {site}/{name}", item["epsilon"])
        delta = _spent(f"spend delta of {site}/{name}", item["delta"])
        rounds = item["rounds"]
        if isinstance(rounds, bool) or not isinstance(rounds, int):
            raise ValueError(f"spend rounds of {site}/{name} must be an integer, got {rounds!r}")
        if epsilon < 0 or delta < 0 or rounds < 0:
            raise ValueError(f"spend of {site}/{name} must not be negative, got {item!r}")
        out.append({"site": site, "name": name, "epsilon": epsilon, "delta": delta, "rounds": rounds})
    return out


def upsert_spend(db: Database, session_id: str, spend: list[dict[str, Any]], now: str) -> None:
    """Writes checked spend items for a session; call inside the caller's transaction."""
    for item in spend:
        db.execute(
            "INSERT INTO privacy_spend (session_id, site, name, epsilon, delta, rounds, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session_id, site, name) DO UPDATE SET"
            " epsilon = excluded.epsilon, delta = excluded.delta, rounds = excluded.rounds,"
            " updated_at = excluded.updated_at",
            [session_id, item["site"], item["name"], item["epsilon"], item["delta"], item["rounds"], now],
        )


def record_evaluation_spend(db: Database, spend: Iterable[dict], *, session_id: str | None = None,
                            plan_id: str | None = None) -> list[dict[str, Any]]:
    """Charges noised evaluation releases to their datasets: a session's, or an evaluation plan's (exactly
    one of ``session_id`` and ``plan_id``). One row per dataset and session (or plan); a later call for the
    same pair replaces it. Checks everything before writing anything.

    Raises:
        ValueError: an item misses or has extra keys (``EVAL_SPEND_KEYS``), a value is out of range, or a
            dataset appears twice.
    """
    if (session_id is None) == (plan_id is None) or not isinstance(session_id or plan_id, str):
        raise ValueError("evaluation spend belongs to exactly one session or evaluation plan")
    items, seen = [], set()
    for item in spend:
        if not isinstance(item, dict) or set(item) != set(EVAL_SPEND_KEYS):
            raise ValueError(f"an evaluation spend item needs exactly the keys {', '.join(EVAL_SPEND_KEYS)}, "
                             f"got {item!r}")
        site, name = item["site"], item["name"]
        if not isinstance(site, str) or not isinstance(name, str) or not site or not name or (site, name) in seen:
            raise ValueError(f"evaluation spend needs a distinct non-empty site and name, got {item!r}")
        seen.add((site, name))
        epsilon = _spent(f"evaluation epsilon of {site}/{name}", item["epsilon"])
        delta = _spent(f"evaluation delta of {site}/{name}", item["delta"])
        noise = _spent(f"evaluation noise multiplier of {site}/{name}", item["noise_multiplier"])
        releases = item["releases"]
        if isinstance(releases, bool) or not isinstance(releases, int) or releases < 1:
            raise ValueError(f"evaluation releases of {site}/{name} must be an integer >= 1, got {releases!r}")
        if epsilon < 0 or delta < 0 or not 0 < noise < math.inf:
            raise ValueError(f"evaluation spend of {site}/{name} is out of range: {item!r}")
        items.append({"site": site, "name": name, "epsilon": epsilon, "delta": delta, "releases": releases,
                      "noise_multiplier": noise})
    with write_transaction(db):
        if session_id is not None and first_row(db, "SELECT id FROM sessions WHERE id = ?", [session_id]) is None:
            raise NotFoundError(f"unknown session {session_id!r}")
        now = utc_now()
        for item in items:
            db.execute("DELETE FROM evaluation_spend WHERE coalesce(session_id, '') = ? AND coalesce(plan_id, '') = ?"
                       " AND site = ? AND name = ?", [session_id or "", plan_id or "", item["site"], item["name"]])
            db.execute(
                "INSERT INTO evaluation_spend (session_id, plan_id, site, name, epsilon, delta, releases,"
                " noise_multiplier, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [session_id, plan_id, item["site"], item["name"], item["epsilon"], item["delta"], item["releases"],
                 item["noise_multiplier"], now],
            )
    return items


def _filter(table: str, site: str | None, name: str | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for column, value in (("site", site), ("name", name)):
        if value is not None:
            clauses.append(f"{table}.{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def privacy_report(db: Database, site: str | None, name: str | None) -> list[dict[str, Any]]:
    """Budget, spend and remainder per dataset identity; see ``Registry.privacy_report``."""
    where, params = _filter("b", site, name)
    budgets = {(row["site"], row["name"]): row for row in db.query(f"SELECT * FROM budgets b{where}", params)}
    spend_where, params = _filter("p", site, name)
    spends: dict[tuple[str, str], list[dict[str, Any]]] = {}
    sql = (
        "SELECT p.site, p.name, p.session_id, p.epsilon, p.delta, p.rounds, s.status,"
        " (SELECT r.epsilon_pld FROM rounds r WHERE r.session_id = p.session_id"
        "  ORDER BY r.round_num DESC LIMIT 1) AS epsilon_pld"
        f" FROM privacy_spend p JOIN sessions s ON s.id = p.session_id{spend_where}"
        " ORDER BY s.created_at, s.id"
    )
    for row in db.query(sql, params):
        keys = ("session_id", "epsilon", "delta", "rounds", "status") + (("epsilon_pld",) if row["epsilon_pld"]
                                                                         is not None else ())
        spends.setdefault((row["site"], row["name"]), []).append({key: row[key] for key in keys})
    evaluations: dict[tuple[str, str], list[dict[str, Any]]] = {}
    eval_where, params = _filter("e", site, name)
    sql = ("SELECT e.site, e.name, e.session_id, e.plan_id, e.epsilon, e.delta, e.releases, e.noise_multiplier,"
           f" s.status FROM evaluation_spend e LEFT JOIN sessions s ON s.id = e.session_id{eval_where}"
           " ORDER BY e.recorded_at, e.rowid")
    for row in db.query(sql, params):
        keys = ("session_id", "plan_id", "epsilon", "delta", "releases", "noise_multiplier", "status")
        evaluations.setdefault((row["site"], row["name"]), []).append({key: row[key] for key in keys})
    units = {}
    unit_where, params = _filter("d", site, name)
    unit_sql = ("SELECT d.site, d.name, d.client_id, d.num_clients FROM datasets d"
                f"{unit_where or ' WHERE 1'} AND d.version ="
                " (SELECT max(version) FROM datasets WHERE site = d.site AND name = d.name)")
    for row in db.query(unit_sql, params):
        units[(row["site"], row["name"])] = unit_of_privacy(row["client_id"])
    report = []
    for key in sorted(set(budgets) | set(spends) | set(evaluations), key=lambda k: f"{k[0]}/{k[1]}"):
        sessions, evaluated = spends.get(key, []), evaluations.get(key, [])
        spent = {
            "epsilon": math.fsum(s["epsilon"] for s in sessions + evaluated),
            "delta": math.fsum(s["delta"] for s in sessions + evaluated),
        }
        budget_row = budgets.get(key)
        budget = None if budget_row is None else {k: budget_row[k] for k in ("epsilon", "delta", "source")}
        remaining = None if budget is None else {k: budget[k] - spent[k] for k in ("epsilon", "delta")}
        if sessions and all("epsilon_pld" in s for s in sessions):  # evaluations add their (RDP) epsilon
            spent["epsilon_pld"] = math.fsum([s["epsilon_pld"] for s in sessions] + [e["epsilon"] for e in evaluated])
        if evaluated:
            spent["evaluation_epsilon"] = math.fsum(e["epsilon"] for e in evaluated)
        report.append({"dataset": f"{key[0]}/{key[1]}", "unit": units.get(key, unit_of_privacy(None)),
                       "budget": budget, "spent": spent, "remaining": remaining, "sessions": sessions,
                       "evaluations": evaluated})
    return report
