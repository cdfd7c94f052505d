"""Privacy budgets and spend in the registry, and budgets mirrored from a real site.

Fast and TF-free: real SQLite files (and ``:memory:``), and for ``sync_site`` a real
gateway with mTLS on loopback (site info only, no worker process).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sqlite3
from pathlib import Path
from typing import Iterator

import pytest

from tffprod.errors import DatasetError, RegistryError, SpecError
from tffprod.registry import Registry

SCHEMA = {"features": [{"name": "x", "dtype": "float32", "shape": [3]}], "label": "y"}


@pytest.fixture(params=["file", "memory"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    """A fresh registry: a real SQLite file in ``tmp_path``, or ``:memory:``."""
    path = tmp_path / "registry.db" if request.param == "file" else ":memory:"
    with Registry.open(path) as opened:
        yield opened


def add_dataset(registry: Registry, site: str = "hospital-a", name: str = "visits", content: str = "aaa") -> dict:
    return registry.add_dataset(site=site, name=name, path=f"/data/{name}.csv", format="csv", schema=SCHEMA,
                                num_examples=120, content_hash=f"sha256:{content}")


def create_session(registry: Registry, name: str = "flu") -> str:
    return registry.create_session(name=name, spec={}, task={}, backend="local", rounds_planned=3,
                                   datasets=["hospital-a/visits"])["id"]


def spend(site: str = "hospital-a", name: str = "visits", epsilon: float = 0.5, delta: float = 1e-6,
          rounds: int = 1) -> dict:
    return {"site": site, "name": name, "epsilon": epsilon, "delta": delta, "rounds": rounds}


def record_round(registry: Registry, session_id: str, round_num: int, spent: list[dict] | None = None,
                 **overrides) -> dict:
    fields = dict(round_num=round_num, metrics={"loss": 1.0}, duration_s=1.0, epsilon=None,
                  participants=[{"site": "hospital-a", "status": "ok", "duration_s": 0.5, "examples": 120,
                                 "error": None}])
    if spent is not None:
        fields["spend"] = spent
    return registry.record_round(session_id, **{**fields, **overrides})


def spend_rows(path: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT session_id, site, name, epsilon, delta, rounds, updated_at FROM privacy_spend"
                            " ORDER BY session_id, site, name").fetchall()


# ---------------------------------------------------------------- the migration


def test_a_registry_with_only_m001_upgrades_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from tffprod.registry.migrations import MIGRATIONS

    path = tmp_path / "old.db"
    old = Database(path)
    MIGRATIONS.apply(old, stop_before="m002_privacy_budgets")  # what an older tffprod created
    old.execute("INSERT INTO sites (name, created_at, updated_at) VALUES ('hospital-a', 't0', 't0')")
    old.execute("INSERT INTO datasets VALUES ('hospital-a', 'visits', 1, '/d.csv', 'csv', '{}', 12, 'sha256:a', 't0')")
    old.execute("INSERT INTO sessions (id, name, status, backend, spec, task, datasets, rounds_planned, created_at)"
                " VALUES ('s-1', 'old', 'finished', 'local', '{}', '{}', '[]', 1, 't0')")
    old.conn.commit()
    tables = {row[0] for row in old.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "budgets" not in tables and "privacy_spend" not in tables
    old.close()

    with Registry.open(path) as registry:
        assert registry.get_dataset("hospital-a/visits:1")["num_examples"] == 12
        assert registry.get_session("s-1")["name"] == "old"
        assert registry.privacy_report() == []
        registry.set_budget("hospital-a", "visits", epsilon=4.0, delta=1e-5, source="coordinator")
        record_round(registry, "s-1", 1, [spend()])
    with contextlib.closing(sqlite3.connect(path)) as conn:
        applied = [row[0] for row in conn.execute("SELECT name FROM _sqlite_migrations ORDER BY id")]
    from tffprod.registry.migrations import _KNOWN

    assert applied == _KNOWN  # every later migration, in order
    with Registry.open(path) as registry:  # reopening applies nothing and keeps the new rows
        assert registry.privacy_report()[0]["spent"] == {"epsilon": 0.5, "delta": 1e-6}


# ---------------------------------------------------------------- budgets


def test_set_budget_upserts_and_get_budget_reads_it(registry: Registry) -> None:
    assert registry.get_budget("hospital-a", "visits") is None
    first = registry.set_budget("hospital-a", "visits", epsilon=8, delta=1e-5, source="coordinator")
    assert {k: first[k] for k in ("site", "name", "epsilon", "delta", "source")} == {
        "site": "hospital-a", "name": "visits", "epsilon": 8.0, "delta": 1e-5, "source": "coordinator"}
    assert isinstance(first["epsilon"], float) and first["updated_at"]
    assert registry.get_budget("hospital-a", "visits") == first
    second = registry.set_budget("hospital-a", "visits", epsilon=2.5, delta=1e-6, source="site")
    assert (second["epsilon"], second["delta"], second["source"]) == (2.5, 1e-6, "site")
    assert registry.get_budget("hospital-a", "visits") == second
    assert registry.get_budget("hospital-a", "other") is None
    assert len(registry.privacy_report()) == 1


def test_a_budget_belongs_to_the_dataset_identity_not_a_version(registry: Registry) -> None:
    assert add_dataset(registry, content="v1")["version"] == 1
    registry.set_budget("hospital-a", "visits", epsilon=3.0, delta=1e-5, source="coordinator")
    session_id = create_session(registry)
    record_round(registry, session_id, 1, [spend(epsilon=1.0)])
    assert add_dataset(registry, content="v2")["version"] == 2  # new data: budget and spend stay
    assert registry.get_budget("hospital-a", "visits")["epsilon"] == 3.0
    assert registry.privacy_report()[0]["remaining"] == {"epsilon": 2.0, "delta": 1e-5 - 1e-6}


@pytest.mark.parametrize(
    "epsilon, delta, source, message",
    [
        (0, 1e-5, "site", "epsilon must be > 0"),
        (-1.0, 1e-5, "site", "epsilon must be > 0"),
        (math.inf, 1e-5, "site", "epsilon must be a finite number"),
        (math.nan, 1e-5, "site", "epsilon must be a finite number"),
        (True, 1e-5, "site", "epsilon must be a finite number"),
        ("8", 1e-5, "site", "epsilon must be a finite number"),
        (8.0, 0, "site", "delta must be > 0 and < 1"),
        (8.0, 1, "site", "delta must be > 0 and < 1"),
        (8.0, -1e-5, "site", "delta must be > 0 and < 1"),
        (8.0, None, "site", "delta must be a finite number"),
        (8.0, 1e-5, "admin", "source must be one of site, coordinator"),
    ],
)
def test_set_budget_refuses_bad_values(registry: Registry, epsilon, delta, source, message) -> None:
    with pytest.raises(ValueError, match=message):
        registry.set_budget("hospital-a", "visits", epsilon=epsilon, delta=delta, source=source)
    assert registry.get_budget("hospital-a", "visits") is None


def test_set_budget_refuses_bad_names(registry: Registry) -> None:
    with pytest.raises(SpecError, match="site name"):
        registry.set_budget("a/b", "visits", epsilon=1.0, delta=1e-5, source="site")
    with pytest.raises(SpecError, match="dataset name"):
        registry.set_budget("hospital-a", "visits:1", epsilon=1.0, delta=1e-5, source="site")


# ---------------------------------------------------------------- spend, recorded with its round


def test_record_round_upserts_the_sessions_cumulative_spend(tmp_path: Path) -> None:
    with Registry.open(tmp_path / "r.db") as registry:
        session_id = create_session(registry)
        record_round(registry, session_id, 1, [spend(epsilon=0.5, rounds=1), spend(name="labs", epsilon=0.2)])
        record_round(registry, session_id, 2, [spend(epsilon=0.9, delta=2e-6, rounds=2)])
        record_round(registry, session_id, 3)  # no spend: earlier spend stays
        rows = [row[:6] for row in spend_rows(registry.path)]
        assert rows == [(session_id, "hospital-a", "labs", 0.2, 1e-6, 1),
                        (session_id, "hospital-a", "visits", 0.9, 2e-6, 2)]
        assert registry.get_session(session_id)["rounds_completed"] == 3
        recorded_at = registry.list_rounds(session_id)[1]["recorded_at"]
        assert spend_rows(registry.path)[1][6] == recorded_at  # written with its round


def test_a_duplicate_round_changes_no_spend(tmp_path: Path) -> None:
    with Registry.open(tmp_path / "r.db") as registry:
        session_id = create_session(registry)
        record_round(registry, session_id, 1, [spend(epsilon=0.5)])
        before = spend_rows(registry.path)
        with pytest.raises(RegistryError, match="round 1"):
            record_round(registry, session_id, 1, [spend(epsilon=99.0), spend(name="labs")])
        assert spend_rows(registry.path) == before
        assert len(registry.list_rounds(session_id)) == 1


@pytest.mark.parametrize("failing", ["spend insert", "progress update"])
def test_a_failure_after_the_round_insert_records_neither_round_nor_spend(tmp_path: Path, failing: str) -> None:
    """The round row, the spend rows and the progress counter commit together or not at all."""
    with Registry.open(tmp_path / "r.db") as registry:
        session_id = create_session(registry)
        record_round(registry, session_id, 1, [spend(epsilon=0.5)])
        before = (spend_rows(registry.path), registry.list_rounds(session_id), registry.get_session(session_id))
        trigger = {
            "spend insert": "BEFORE INSERT ON privacy_spend WHEN NEW.name = 'labs'",  # visits was upserted first
            "progress update": "BEFORE UPDATE OF rounds_completed ON sessions",
        }[failing]
        with contextlib.closing(sqlite3.connect(registry.path)) as conn:
            conn.execute(f"CREATE TRIGGER crash {trigger} BEGIN SELECT RAISE(ABORT, 'simulated crash'); END")
            conn.commit()
        with pytest.raises(RegistryError, match="simulated crash"):
            record_round(registry, session_id, 2, [spend(epsilon=0.9, rounds=2), spend(name="labs")])
        assert (spend_rows(registry.path), registry.list_rounds(session_id), registry.get_session(session_id)) == before


@pytest.mark.parametrize(
    "items, message",
    [
        ([{"site": "hospital-a", "name": "visits", "epsilon": 1.0, "delta": 0.0}], "exactly the keys"),
        ([{**spend(), "dataset": "hospital-a/visits"}], "exactly the keys"),
        ([spend(epsilon=-0.1)], "must not be negative"),
        ([spend(rounds=1.5)], "rounds of hospital-a/visits must be an integer"),
        ([spend(delta=math.nan)], "delta of hospital-a/visits must be a number"),
        ([spend(epsilon="0.5")], "epsilon of hospital-a/visits must be a number"),
        ([spend(site="")], "non-empty strings"),
        ([spend(), spend(epsilon=2.0)], "lists dataset hospital-a/visits twice"),
        (["hospital-a/visits"], "exactly the keys"),
    ],
)
def test_malformed_spend_records_nothing(registry: Registry, items: list, message: str) -> None:
    session_id = create_session(registry)
    with pytest.raises(ValueError, match=message):
        record_round(registry, session_id, 1, items)
    assert registry.list_rounds(session_id) == []
    assert registry.privacy_report() == []


# ---------------------------------------------------------------- the report


def test_privacy_report_sums_sessions_by_basic_composition(registry: Registry) -> None:
    registry.set_budget("hospital-a", "visits", epsilon=4.0, delta=1e-5, source="site")
    registry.set_budget("hospital-b", "visits", epsilon=1.0, delta=1e-6, source="coordinator")  # nothing spent
    first, second = create_session(registry, "first"), create_session(registry, "second")
    record_round(registry, first, 1, [spend(epsilon=1.25, delta=1e-6, rounds=1)])
    record_round(registry, first, 2, [spend(epsilon=1.5, delta=2e-6, rounds=2), spend(name="labs", epsilon=0.25)])
    registry.finish_session(first, status="finished")
    registry.start_session(second)
    record_round(registry, second, 1, [spend(epsilon=2.0, delta=3e-6, rounds=1)])

    report = registry.privacy_report()
    assert [entry["dataset"] for entry in report] == ["hospital-a/labs", "hospital-a/visits", "hospital-b/visits"]
    labs, visits, untouched = report
    assert visits["budget"] == {"epsilon": 4.0, "delta": 1e-5, "source": "site"}
    assert visits["spent"] == {"epsilon": 3.5, "delta": pytest.approx(5e-6)}
    assert visits["remaining"] == {"epsilon": 0.5, "delta": pytest.approx(5e-6)}
    assert visits["sessions"] == [
        {"session_id": first, "epsilon": 1.5, "delta": 2e-6, "rounds": 2, "status": "finished"},
        {"session_id": second, "epsilon": 2.0, "delta": 3e-6, "rounds": 1, "status": "running"},
    ]
    assert labs["budget"] is None and labs["remaining"] is None  # spend without a budget is still reported
    assert labs["spent"] == {"epsilon": 0.25, "delta": 1e-6}
    assert untouched == {"dataset": "hospital-b/visits", "unit": "site dataset (site-level)",
                         "budget": {"epsilon": 1.0, "delta": 1e-6,
                                                                     "source": "coordinator"},
                         "spent": {"epsilon": 0.0, "delta": 0.0}, "remaining": {"epsilon": 1.0, "delta": 1e-6},
                         "sessions": [], "evaluations": []}


def test_an_overspent_budget_reports_a_negative_remainder(registry: Registry) -> None:
    registry.set_budget("hospital-a", "visits", epsilon=1.0, delta=1e-6, source="coordinator")
    record_round(registry, create_session(registry), 1, [spend(epsilon=1.5, delta=1e-6)])
    assert registry.privacy_report()[0]["remaining"] == {"epsilon": -0.5, "delta": 0.0}


def test_an_infinite_spend_is_recorded_and_exhausts_the_budget(registry: Registry) -> None:
    registry.set_budget("hospital-a", "visits", epsilon=1.0, delta=1e-6, source="coordinator")
    record_round(registry, create_session(registry), 1, [spend(epsilon=math.inf)])
    (entry,) = registry.privacy_report()
    assert entry["spent"]["epsilon"] == math.inf and entry["remaining"]["epsilon"] == -math.inf


def test_privacy_report_filters(registry: Registry) -> None:
    for site, name in (("hospital-a", "visits"), ("hospital-a", "labs"), ("hospital-b", "visits")):
        registry.set_budget(site, name, epsilon=1.0, delta=1e-6, source="coordinator")
    record_round(registry, create_session(registry), 1, [spend(site="hospital-b")])

    def datasets(**filters) -> list[str]:
        return [entry["dataset"] for entry in registry.privacy_report(**filters)]

    assert datasets(site="hospital-a") == ["hospital-a/labs", "hospital-a/visits"]
    assert datasets(name="visits") == ["hospital-a/visits", "hospital-b/visits"]
    assert datasets(site="hospital-b", name="visits") == ["hospital-b/visits"]
    assert registry.privacy_report(site="hospital-b")[0]["spent"]["epsilon"] == 0.5
    assert registry.privacy_report(site="hospital-z") == []
    assert registry.privacy_report(site="hospital-a", name="nope") == []


# ---------------------------------------------------------------- budgets from a real site


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tffprod.security.certs import init_ca, issue

    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca")
    site = issue("hospital-a", ca_dir=root / "ca", out_dir=root / "site")
    coordinator = issue("coordinator", ca_dir=root / "ca", out_dir=root / "coordinator")
    (root / "token").write_text("s3cret-token\n")
    return {"ca": site.ca_cert, "site_key": site.key, "site_cert": site.cert, "key": coordinator.key,
            "cert": coordinator.cert, "token": root / "token"}


@contextlib.contextmanager
def serving(registry: Registry, pki: dict[str, Path], tmp_path: Path, budgets: dict) -> Iterator[None]:
    """Site ``hospital-a`` with datasets ``visits`` and ``labs`` (budgets as given) behind a real gateway."""
    from tffprod.executors.audit import AuditLog
    from tffprod.executors.gateway import CatalogEntry, Gateway
    from tffprod.sites.admin import add_site

    catalog = {name: CatalogEntry(name=name, path=str(tmp_path / f"{name}.csv"), format="csv", schema=SCHEMA,
                                  num_examples=10, content_hash=f"sha256:{name}", budget=budgets.get(name))
               for name in ("visits", "labs")}
    tls = tuple(pki[k].read_bytes() for k in ("site_key", "site_cert", "ca"))
    with AuditLog(tmp_path / "audit.jsonl") as audit:
        gateway = Gateway(site="hospital-a", listen="127.0.0.1:0", worker_address="127.0.0.1:1", catalog=catalog,
                          tokens={"coordinator": hashlib.sha256(b"s3cret-token").hexdigest()}, tls=tls,
                          audit=audit, worker_health=lambda: False)
        port = gateway.start()
        try:
            add_site(registry, "hospital-a", address=f"127.0.0.1:{port}", ca=pki["ca"], cert=pki["cert"],
                     key=pki["key"], token_file=pki["token"])
            yield
        finally:
            gateway.stop(grace=0)


def test_sync_site_mirrors_site_budgets_which_win(tmp_path: Path, pki: dict[str, Path]) -> None:
    from tffprod.sites.admin import sync_site

    with Registry.open(tmp_path / "r.db") as registry:
        registry.set_budget("hospital-a", "visits", epsilon=100.0, delta=1e-3, source="coordinator")
        registry.set_budget("hospital-a", "labs", epsilon=5.0, delta=1e-5, source="coordinator")
        with serving(registry, pki, tmp_path, {"visits": {"epsilon": 8.0, "delta": 1e-5}}):
            rows = sync_site(registry, "hospital-a")
        assert sorted(row["ref"] for row in rows) == ["hospital-a/labs:1", "hospital-a/visits:1"]
        visits = registry.get_budget("hospital-a", "visits")
        assert (visits["epsilon"], visits["delta"], visits["source"]) == (8.0, 1e-5, "site")
        assert registry.get_budget("hospital-a", "labs")["source"] == "coordinator"  # the site declares none
        synced, added = registry.list_audit(limit=2)  # each in the same transaction as its change
        assert (added["action"], synced["action"], synced["subject"]) == ("site.add", "site.sync", "hospital-a")
        assert synced["details"] == {"datasets": ["hospital-a/labs:1", "hospital-a/visits:1"],
                                     "budgets": {"hospital-a/visits": [8.0, 1e-5]}}

        # The site drops its budget: the registry keeps the last one mirrored (never lifts a limit).
        with serving(registry, pki, tmp_path, {}):
            sync_site(registry, "hospital-a")
        assert registry.get_budget("hospital-a", "visits") == visits


def test_sync_site_refuses_an_invalid_site_budget_before_writing(tmp_path: Path, pki: dict[str, Path]) -> None:
    from tffprod.errors import SiteCheckError
    from tffprod.sites.admin import sync_site

    with Registry.open(tmp_path / "r.db") as registry:
        with serving(registry, pki, tmp_path, {"labs": {"epsilon": -1.0, "delta": 1e-5}}):
            with pytest.raises(SiteCheckError, match="site hospital-a: dataset 'labs' has an invalid budget"):
                sync_site(registry, "hospital-a")
        assert registry.list_datasets() == [] and registry.privacy_report() == []
        assert [entry["action"] for entry in registry.list_audit()] == ["site.add"]


def test_register_dataset_cannot_override_a_site_budget(tmp_path: Path) -> None:
    from tffprod.data.files import write_csv
    from tffprod.data.register import register_dataset
    from tffprod.data.schema import Feature, Schema

    schema = Schema(features=(Feature("a", "float32"),), label=Feature("y", "int64"))
    data = tmp_path / "visits.csv"
    write_csv(data, [{"a": 0.5 * i, "y": i % 2} for i in range(4)], schema)
    with Registry.open(tmp_path / "r.db") as registry:
        row = register_dataset(registry, "hospital-a/visits", data, schema=schema, budget=(8.0, 1e-5))
        assert (row["ref"], row["budget"]["source"]) == ("hospital-a/visits:1", "coordinator")
        assert "budget" not in register_dataset(registry, "hospital-a/visits", data, schema=schema)
        with pytest.raises(SpecError, match="delta must be > 0 and < 1"):
            register_dataset(registry, "hospital-a/visits", data, schema=schema, budget=(8.0, 2.0))
        registry.set_budget("hospital-a", "visits", epsilon=3.0, delta=1e-6, source="site")
        with pytest.raises(DatasetError, match="set by the site's config"):
            register_dataset(registry, "hospital-a/visits", data, schema=schema, budget=(9.0, 1e-5))
        assert registry.get_budget("hospital-a", "visits")["epsilon"] == 3.0


def eval_spend(site: str = "hospital-a", name: str = "visits", epsilon: float = 0.75, **overrides) -> dict:
    return {"site": site, "name": name, "epsilon": epsilon, "delta": 1e-6, "releases": 1, "noise_multiplier": 2.0,
            **overrides}


def test_noised_evaluations_are_charged_to_the_budget_and_shown_apart_from_training(registry: Registry) -> None:
    registry.set_budget("hospital-a", "visits", epsilon=4.0, delta=1e-5, source="site")
    first, second = create_session(registry, "first"), create_session(registry, "second")
    record_round(registry, first, 1, [spend(epsilon=1.5)])
    registry.record_evaluation_spend([eval_spend(), eval_spend(name="labs", epsilon=0.5)], session_id=first)
    registry.record_evaluation_spend([eval_spend(epsilon=0.25)], session_id=second)
    registry.record_evaluation_spend([eval_spend(epsilon=0.5)], session_id=second)  # replaces the session's row
    registry.record_evaluation_spend([eval_spend(epsilon=0.5)], plan_id="p" * 64)  # an evaluation plan's release

    labs, visits = registry.privacy_report()
    assert [(e["session_id"], e["plan_id"], e["epsilon"]) for e in visits["evaluations"]] == [
        (first, None, 0.75), (second, None, 0.5), (None, "p" * 64, 0.5)]
    assert visits["evaluations"][0] == {"session_id": first, "plan_id": None, "epsilon": 0.75, "delta": 1e-6,
                                        "releases": 1, "noise_multiplier": 2.0, "status": "pending"}
    assert [s["session_id"] for s in visits["sessions"]] == [first]  # training only
    assert visits["spent"] == {"epsilon": 3.25, "delta": pytest.approx(4e-6), "evaluation_epsilon": 1.75}
    assert visits["remaining"]["epsilon"] == pytest.approx(0.75)
    # A dataset that was only evaluated is reported too, without a budget.
    assert labs["budget"] is None and labs["sessions"] == [] and labs["spent"]["epsilon"] == 0.5


@pytest.mark.parametrize("item, problem", [
    (eval_spend(releases=0), "releases"),
    (eval_spend(noise_multiplier=0.0), "out of range"),
    (eval_spend(epsilon=-1.0), "out of range"),
    ({"site": "hospital-a", "name": "visits", "epsilon": 1.0}, "exactly the keys"),
])
def test_a_malformed_evaluation_spend_writes_nothing(registry: Registry, item: dict, problem: str) -> None:
    session = create_session(registry)
    with pytest.raises(ValueError, match=problem):
        registry.record_evaluation_spend([eval_spend(name="labs"), item], session_id=session)
    assert registry.privacy_report() == []


def test_evaluation_spend_needs_a_known_session(registry: Registry) -> None:
    from tffprod.errors import NotFoundError

    with pytest.raises(NotFoundError, match="unknown session"):
        registry.record_evaluation_spend([eval_spend()], session_id="s-nope")
    with pytest.raises(ValueError, match="exactly one session or evaluation plan"):
        registry.record_evaluation_spend([eval_spend()], session_id=create_session(registry), plan_id="p" * 64)
