"""Tests of ``tffprod.registry`` against real SQLite databases (files and ``:memory:``)."""

from __future__ import annotations

import datetime
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tffprod.errors import NotFoundError, RegistryError, SpecError
from tffprod.registry import Registry, default_path

SCHEMA = {"features": [{"name": "x", "dtype": "float32", "shape": [3]}], "label": "y"}
TABLES = {"sites", "datasets", "sessions", "rounds", "model_versions", "evaluations"}


@pytest.fixture(params=["file", "memory"])
def registry(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh registry: a real SQLite file in ``tmp_path``, or ``:memory:``."""
    path = tmp_path / "registry.db" if request.param == "file" else ":memory:"
    with Registry.open(path) as opened:
        yield opened


def add_dataset(registry: Registry, **overrides) -> dict:
    fields = dict(
        site="hospital-a",
        name="visits",
        path="/data/visits.csv",
        format="csv",
        schema=SCHEMA,
        num_examples=120,
        content_hash="sha256:aaa",
    )
    return registry.add_dataset(**{**fields, **overrides})


def create_session(registry: Registry, name: str = "flu") -> dict:
    return registry.create_session(
        name=name,
        spec={"rounds": 3, "clients_per_round": 2},
        task={"path": "examples.flu:task"},
        backend="local",
        rounds_planned=3,
        datasets=["hospital-a/visits:1", "hospital-b/visits:1"],
    )


def record_round(registry: Registry, session_id: str, round_num: int, **overrides) -> dict:
    fields = dict(
        round_num=round_num,
        metrics={"loss": 1.0 / round_num},
        participants=[
            {"site": "hospital-a", "status": "ok", "duration_s": 0.5, "examples": 120, "error": None},
            {"site": "hospital-b", "status": "timeout", "duration_s": 30.0, "examples": 0, "error": "deadline"},
        ],
        duration_s=31.0,
        epsilon=0.5 * round_num,
    )
    return registry.record_round(session_id, **{**fields, **overrides})


def add_model(registry: Registry, session_id: str, name: str = "flu-model") -> dict:
    return registry.add_model_version(
        name=name,
        session_id=session_id,
        artifact_path="/artifacts/flu/1",
        metrics={"accuracy": 0.9},
        dp={"noise_multiplier": 1.1, "clip": 1.0},
        epsilon=3.0,
        delta=1e-5,
        datasets=["hospital-a/visits:1"],
        task={"path": "examples.flu:task"},
    )


def count(registry: Registry, table: str) -> int:
    with sqlite3.connect(registry.path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def assert_utc(timestamp: str) -> None:
    parsed = datetime.datetime.fromisoformat(timestamp)
    assert parsed.utcoffset() == datetime.timedelta(0)


# Migrations and opening.


def test_open_creates_schema_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    Registry.open(path).close()
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        applied = conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
        journal_mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert TABLES <= tables
    from tffprod.registry.migrations import _KNOWN

    assert applied == [("tffprod.registry", name) for name in _KNOWN]  # every migration, in order
    assert _KNOWN[:3] == ["m001_initial", "m002_privacy_budgets", "m003_clients"]
    assert journal_mode == "wal"
    with Registry.open(path) as registry:
        assert registry._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert registry._db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_reopening_keeps_data_and_does_not_reapply_migrations(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with Registry.open(path) as registry:
        registry.add_site("hospital-a", address="a.example:8443")
    with sqlite3.connect(path) as conn:
        first = conn.execute("SELECT id, name, applied_at FROM _sqlite_migrations").fetchall()
    with Registry.open(str(path)) as registry:
        assert registry.get_site("hospital-a")["address"] == "a.example:8443"
        assert registry.path == str(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT id, name, applied_at FROM _sqlite_migrations").fetchall() == first


def test_registry_from_a_newer_tffprod_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    Registry.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
            "VALUES ('tffprod.registry', 'm999_future', '2030-01-01')"
        )
    with pytest.raises(RegistryError, match="m999_future"):
        Registry.open(path)


def test_corrupt_file_raises_registry_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(RegistryError, match=re.escape(str(path))) as caught:
        Registry.open(path)
    assert "not a database" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_directory_path_raises_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=re.escape(str(tmp_path))):
        Registry.open(tmp_path)


def test_path_in_missing_directory_raises_registry_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "r.db"
    with pytest.raises(RegistryError, match=re.escape(str(path))):
        Registry.open(path)
    assert not path.parent.exists()


def test_closed_registry_raises_registry_error(tmp_path: Path) -> None:
    with Registry.open(tmp_path / "r.db") as registry:
        pass
    with pytest.raises(RegistryError, match="closed"):
        registry.list_sites()


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TFFPROD_REGISTRY", raising=False)
    assert default_path() == str(tmp_path / "tffprod.db")
    monkeypatch.setenv("TFFPROD_REGISTRY", "elsewhere/reg.db")
    assert default_path() == str(tmp_path / "elsewhere" / "reg.db")


def test_import_does_not_load_tensorflow() -> None:
    code = (
        "import sys, tffprod.registry\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'tensorflow_federated', 'sqlite_utils'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# Sites and datasets.


def test_add_site_upserts(registry: Registry) -> None:
    created = registry.add_site("hospital-a", address="a.example:8443", info={"region": "eu"})
    assert created["address"] == "a.example:8443"
    assert_utc(created["created_at"])
    updated = registry.add_site("hospital-a", info={"region": "us"})
    assert updated["address"] == "a.example:8443"
    assert updated["info"] == {"region": "us"}
    assert [site["name"] for site in registry.list_sites()] == ["hospital-a"]


@pytest.mark.parametrize("name", ["", "a/b", "a:1", " a", "-a"])
def test_invalid_names_are_refused(registry: Registry, name: str) -> None:
    with pytest.raises(SpecError):
        registry.add_site(name)
    with pytest.raises(SpecError):
        add_dataset(registry, name=name)


def test_dataset_versions(registry: Registry) -> None:
    first = add_dataset(registry)
    assert first["ref"] == "hospital-a/visits:1"
    assert first["version"] == 1 and first["schema"] == SCHEMA
    assert_utc(first["registered_at"])
    assert registry.get_site("hospital-a")["name"] == "hospital-a"

    assert add_dataset(registry) == first
    second = add_dataset(registry, content_hash="sha256:bbb", num_examples=140)
    assert second["ref"] == "hospital-a/visits:2"
    assert add_dataset(registry, content_hash="sha256:bbb", path="/data/v2.csv")["version"] == 3
    assert add_dataset(registry, content_hash="sha256:bbb", path="/data/v2.csv", schema={})["version"] == 4

    assert registry.get_dataset("hospital-a/visits")["version"] == 4
    assert registry.get_dataset("hospital-a/visits:1") == first
    assert registry.get_dataset("hospital-a/visits:2")["num_examples"] == 140


def test_list_datasets_gives_latest_versions_sorted_by_ref(registry: Registry) -> None:
    add_dataset(registry, site="hospital-b")
    add_dataset(registry)
    add_dataset(registry, content_hash="sha256:bbb")
    add_dataset(registry, name="labs")
    refs = [d["ref"] for d in registry.list_datasets()]
    assert refs == ["hospital-a/labs:1", "hospital-a/visits:2", "hospital-b/visits:1"]
    assert [d["ref"] for d in registry.list_datasets("hospital-b")] == ["hospital-b/visits:1"]
    assert registry.list_datasets("nowhere") == []


@pytest.mark.parametrize(
    "ref",
    ["hospital-a/labs", "hospital-b/visits", "hospital-a/visits:2", "hospital-a/visits:0"],
)
def test_unknown_dataset_refs_raise_not_found(registry: Registry, ref: str) -> None:
    add_dataset(registry)
    with pytest.raises(NotFoundError, match=re.escape(repr(ref))):
        registry.get_dataset(ref)


@pytest.mark.parametrize("ref", ["visits", "hospital-a/", "a/b/c", "hospital-a/visits:x", "a/b:1:2", ""])
def test_malformed_dataset_refs_raise_not_found(registry: Registry, ref: str) -> None:
    with pytest.raises(NotFoundError, match="malformed dataset ref.*SITE/NAME"):
        registry.get_dataset(ref)


def test_other_unknown_names_raise_not_found(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="nowhere"):
        registry.get_site("nowhere")
    with pytest.raises(NotFoundError, match="s-missing"):
        registry.get_session("s-missing")
    with pytest.raises(NotFoundError, match="s-missing"):
        registry.start_session("s-missing")
    with pytest.raises(NotFoundError, match="s-missing"):
        registry.list_rounds("s-missing")
    with pytest.raises(NotFoundError, match="s-missing"):
        record_round(registry, "s-missing", 1)
    with pytest.raises(NotFoundError, match="nomodel"):
        registry.get_model_version("nomodel")
    with pytest.raises(NotFoundError, match="malformed model ref"):
        registry.get_model_version("a:b:c")


# Sessions and rounds.


def test_session_lifecycle_with_rounds(registry: Registry) -> None:
    session = create_session(registry)
    assert re.fullmatch(r"s-\d{8}-\d{6}-[0-9a-f]{4}", session["id"])
    assert session["status"] == "pending"
    assert session["rounds_completed"] == 0
    assert session["started_at"] is None and session["duration_s"] is None
    assert_utc(session["created_at"])

    running = registry.start_session(session["id"])
    assert running["status"] == "running"
    assert_utc(running["started_at"])

    for round_num in (1, 2):
        recorded = record_round(registry, session["id"], round_num)
        assert recorded["round_num"] == round_num
        assert registry.get_session(session["id"])["rounds_completed"] == round_num
    rounds = registry.list_rounds(session["id"])
    assert [r["round_num"] for r in rounds] == [1, 2]
    assert rounds[1]["epsilon"] == 1.0
    assert rounds[0]["participants"][1]["status"] == "timeout"

    done = registry.finish_session(session["id"], status="failed", error="site b unreachable")
    assert done["status"] == "failed"
    assert done["error"] == "site b unreachable"
    assert done["duration_s"] >= 0
    assert_utc(done["finished_at"])
    assert registry.get_session(session["id"]) == done


def test_finish_session_refuses_non_final_status(registry: Registry) -> None:
    session = create_session(registry)
    with pytest.raises(ValueError):
        registry.finish_session(session["id"], status="running")
    assert registry.get_session(session["id"])["status"] == "pending"


def test_list_sessions_newest_first_and_by_status(registry: Registry) -> None:
    ids = [create_session(registry, name=f"run-{i}")["id"] for i in range(3)]
    assert len(set(ids)) == 3
    registry.start_session(ids[1])
    assert [s["id"] for s in registry.list_sessions()] == ids[::-1]
    assert [s["id"] for s in registry.list_sessions(status="running")] == [ids[1]]
    assert registry.list_sessions(status="finished") == []


def test_duplicate_round_raises_and_changes_nothing(tmp_path: Path) -> None:
    with Registry.open(tmp_path / "r.db") as registry:
        session = create_session(registry)
        record_round(registry, session["id"], 1)
        record_round(registry, session["id"], 2)
        before = registry.list_rounds(session["id"])
        with pytest.raises(RegistryError, match="round 1"):
            record_round(registry, session["id"], 1, metrics={"loss": 99.0})
        assert count(registry, "rounds") == 2
        assert registry.list_rounds(session["id"]) == before
        assert registry.get_session(session["id"])["rounds_completed"] == 2


def test_bad_participant_status_records_nothing(registry: Registry) -> None:
    session = create_session(registry)
    with pytest.raises(ValueError):
        record_round(registry, session["id"], 1, participants=[{"site": "a", "status": "lost"}])
    assert registry.list_rounds(session["id"]) == []


# Model versions and evaluations.


def test_model_versions_count_per_name(registry: Registry) -> None:
    session_id = create_session(registry)["id"]
    first = add_model(registry, session_id)
    assert first["version"] == 1
    assert first["dp"] == {"noise_multiplier": 1.1, "clip": 1.0}
    assert first["datasets"] == ["hospital-a/visits:1"]
    assert (first["epsilon"], first["delta"]) == (3.0, 1e-5)
    assert_utc(first["created_at"])
    assert add_model(registry, session_id)["version"] == 2
    assert add_model(registry, session_id, name="other")["version"] == 1

    assert registry.get_model_version("flu-model")["version"] == 2
    assert registry.get_model_version("flu-model:1") == first
    with pytest.raises(NotFoundError, match="flu-model:3"):
        registry.get_model_version("flu-model:3")
    listed = [(m["name"], m["version"]) for m in registry.list_model_versions()]
    assert listed == [("flu-model", 1), ("flu-model", 2), ("other", 1)]
    assert len(registry.list_model_versions("other")) == 1


def test_model_version_needs_a_known_session(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="s-missing"):
        add_model(registry, "s-missing")
    assert registry.list_model_versions() == []


def test_evaluations(registry: Registry) -> None:
    session_id = create_session(registry)["id"]
    add_model(registry, session_id)
    add_model(registry, session_id)
    first = registry.add_evaluation(model="flu-model", version=1, dataset="hospital-a/visits:1", metrics={"auc": 0.8})
    registry.add_evaluation(
        model="flu-model", version=2, dataset="hospital-a/visits:1", metrics={"auc": 0.85}, session_id=session_id
    )
    assert first["metrics"] == {"auc": 0.8} and first["session_id"] is None
    assert [e["version"] for e in registry.list_evaluations("flu-model")] == [1, 2]
    assert registry.list_evaluations("flu-model", 2)[0]["session_id"] == session_id
    with pytest.raises(NotFoundError, match="flu-model:3"):
        registry.add_evaluation(model="flu-model", version=3, dataset="x/y", metrics={})
    with pytest.raises(NotFoundError):
        registry.list_evaluations("nomodel")


def test_json_columns_round_trip(tmp_path: Path) -> None:
    value = {"nested": {"list": [1, 2.5, None, True], "text": "héllo ✓"}, "empty": {}, "big": 2**53}
    path = tmp_path / "r.db"
    with Registry.open(path) as registry:
        registry.add_site("hospital-a", info=value)
        add_dataset(registry, schema=value)
        session = registry.create_session(
            name="s", spec=value, task=value, backend="local", rounds_planned=1, datasets=["a/b"]
        )
        record_round(registry, session["id"], 1, metrics=value)
    with Registry.open(path) as registry:
        assert registry.get_site("hospital-a")["info"] == value
        assert registry.get_dataset("hospital-a/visits")["schema"] == value
        reread = registry.get_session(session["id"])
        assert (reread["spec"], reread["task"], reread["datasets"]) == (value, value, ["a/b"])
        assert registry.list_rounds(session["id"])[0]["metrics"] == value


# ---------------------------------------------------------------- atomic(): a change and its audit entry


def test_atomic_commits_a_change_and_its_audit_entry_together(registry: Registry) -> None:
    with registry.atomic():
        registry.create_federation("hospitals")
        registry.record_action("federation.create", "hospitals")
    assert registry.get_federation("hospitals")["name"] == "hospitals"
    assert [e["action"] for e in registry.list_audit()] == ["federation.create"]


def test_atomic_undoes_every_write_when_the_audit_entry_fails(registry: Registry) -> None:
    with pytest.raises(TypeError):
        with registry.atomic():
            registry.create_federation("hospitals")
            add_dataset(registry)
            registry.record_action("federation.create", "hospitals", {"not json": object()})
    with pytest.raises(NotFoundError):
        registry.get_federation("hospitals")
    assert registry.list_datasets() == [] and registry.list_audit() == []
    registry.create_federation("later")  # the registry is usable afterwards
    assert [f["name"] for f in registry.list_federations()] == ["later"]


def test_a_failed_write_inside_atomic_undoes_only_its_own_part(registry: Registry) -> None:
    with registry.atomic():
        registry.create_federation("hospitals")
        with pytest.raises(NotFoundError):
            registry.add_federation_site("hospitals", "no-such-site")
        add_dataset(registry)
    assert registry.get_federation("hospitals")["sites"] == []
    assert [d["ref"] for d in registry.list_datasets()] == ["hospital-a/visits:1"]


def test_atomic_holds_the_write_lock_until_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    with Registry.open(path) as registry:
        with registry.atomic():
            registry.create_federation("hospitals")
            other = sqlite3.connect(path, timeout=0)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            assert other.execute("SELECT count(*) FROM federations").fetchone() == (0,)  # not yet visible
        assert other.execute("SELECT count(*) FROM federations").fetchone() == (1,)
        other.close()
