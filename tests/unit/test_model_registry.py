"""The model registry: aliases, lineage, access lists, export refusal and model cards.

TF-free, with real SQLite files: versions are built through the registry API, with a
fake artifact directory (export is a copy, so a SavedModel's bytes are not needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tffprod.errors import AccessDeniedError, NotFoundError, RegistryError, SpecError
from tffprod.models.export import export_version
from tffprod.models.lineage import REQUIRED, missing_fields, task_source
from tffprod.registry import Registry
from tests.helpers.model_versions import EVAL, TASK, TRAIN, add_version


def ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    return result.stdout


def one_error_line(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, f"exit {result.exit_code} (want {exit_code}): {result.output}"
    lines = result.stderr.splitlines()
    assert result.stdout == "" and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.fixture
def registry(tmp_path: Path):
    with Registry.open(tmp_path / "registry.db") as opened:
        yield opened


# Lineage.


def test_lineage_is_complete_on_a_new_version(registry, tmp_path):
    version = add_version(registry, tmp_path)
    lineage = registry.get_model_version("flu:1")["lineage"]
    assert missing_fields(lineage) == []
    assert set(REQUIRED) <= set(lineage)
    assert lineage["session"] == {"id": version["session_id"], "name": "flu", "backend": "local",
                                  "rounds_completed": 0, "rounds_planned": 3}
    assert lineage["sites"] == ["hospital-a", "hospital-b"]
    assert [(d["ref"], d["role"], d["content_hash"]) for d in lineage["datasets"]] == [
        ("hospital-a/train:1", "train", "sha256:hospital-a-train"),
        ("hospital-b/train:1", "train", "sha256:hospital-b-train"),
        ("hospital-a/test:1", "eval", "sha256:hospital-a-test")]
    assert (lineage["epsilon"], lineage["delta"], lineage["privacy_unit"]) == (12.5, 1e-5, "site dataset (site-level)")
    assert lineage["dp"]["noise_multiplier"] == 0.3
    import tffprod.examples.digits as digits_module
    import hashlib
    assert lineage["task"]["sha256"] == hashlib.sha256(Path(digits_module.__file__).read_bytes()).hexdigest()
    assert set(lineage["versions"]) == {"tffprod", "tensorflow_federated", "tensorflow"}
    assert lineage["metrics"]["overall"] == {"accuracy": 0.8}
    assert lineage["metrics"]["per_site"] == {"hospital-a": {"hospital-a/test:1": {"accuracy": 0.8}}}


def test_task_source_of_a_file_path_and_of_a_missing_module(tmp_path):
    task_file = tmp_path / "mytask.py"
    task_file.write_text("task = None\n")
    source = task_source(f"{task_file}:task")
    assert source["file"] == str(task_file.resolve()) and len(source["sha256"]) == 64
    assert task_source("no_such_module_xyz:task")["sha256"] is None
    assert "task.sha256" in missing_fields({**dict.fromkeys(REQUIRED), "task": task_source("no_such_module_xyz:task")})


def test_missing_fields_names_what_is_absent():
    assert missing_fields(None) == list(REQUIRED)
    assert "versions" in missing_fields({"session": {}})


# Aliases.


def test_alias_resolves_moves_and_is_removed(registry, tmp_path):
    add_version(registry, tmp_path)
    add_version(registry, tmp_path)
    registry.set_model_alias("flu:1", "production")
    assert registry.get_model_version("flu@production")["version"] == 1
    assert registry.get_model_version("flu:1")["aliases"] == ["production"]
    registry.set_model_alias("flu", "production")  # moves to the latest
    assert registry.get_model_version("flu@production")["version"] == 2
    assert registry.get_model_version("flu:1")["aliases"] == []
    assert registry.list_model_aliases() == {"flu": {"production": 2}}
    assert registry.remove_model_alias("flu", "production")["version"] == 2
    with pytest.raises(NotFoundError, match="no alias 'production'"):
        registry.get_model_version("flu@production")


def test_bad_aliases_are_refused(registry, tmp_path):
    add_version(registry, tmp_path)
    with pytest.raises(SpecError):
        registry.set_model_alias("flu:1", "7")
    with pytest.raises(SpecError):
        registry.set_model_alias("flu:1", "a/b")
    with pytest.raises(NotFoundError):
        registry.set_model_alias("flu:9", "staging")
    with pytest.raises(NotFoundError):
        registry.remove_model_alias("flu", "never-set")


# Access.


def test_default_access_is_the_training_sites_and_the_federation(registry, tmp_path):
    assert add_version(registry, tmp_path)["access"] == ["site:hospital-a", "site:hospital-b"]
    assert add_version(registry, tmp_path, federation="flu-net")["access"] == [
        "site:hospital-a", "site:hospital-b", "federation:flu-net"]


def test_a_federation_principal_grants_access_to_its_member_sites(registry, tmp_path):
    version = add_version(registry, tmp_path, federation="flu-net")
    registry.add_site("hospital-c", address="127.0.0.1:1")
    assert not registry.site_may_receive(version, "hospital-c")
    registry.create_federation("flu-net")
    registry.add_federation_site("flu-net", "hospital-c")
    assert registry.site_may_receive(version, "hospital-c")  # a member of a listed federation
    registry.remove_federation_site("flu-net", "hospital-c")
    with pytest.raises(AccessDeniedError, match="'hospital-c' may not receive model flu:1"):
        export_version(registry, "flu:1", tmp_path / "out", for_site="hospital-c")


def test_access_edits(registry, tmp_path):
    add_version(registry, tmp_path)
    version = registry.set_model_access("flu:1", allow=["site:hospital-c"], revoke=["site:hospital-b"])
    assert version["access"] == ["site:hospital-a", "site:hospital-c"]
    assert registry.site_may_receive(version, "hospital-c") and not registry.site_may_receive(version, "hospital-b")
    with pytest.raises(SpecError, match="site:NAME"):
        registry.set_model_access("flu:1", allow=["hospital-d"])
    assert registry.get_model_version("flu:1")["access"] == ["site:hospital-a", "site:hospital-c"]


def test_export_for_a_site_not_allowed_writes_nothing(registry, tmp_path):
    add_version(registry, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(AccessDeniedError, match="'hospital-c' may not receive model flu:1"):
        export_version(registry, "flu:1", out, for_site="hospital-c")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_export_writes_a_model_card_with_lineage_access_and_metrics(registry, tmp_path):
    from tffprod.models.access import set_alias

    add_version(registry, tmp_path)
    set_alias(registry, "flu:1", "production")
    result = export_version(registry, "flu@production", tmp_path / "out", for_site="hospital-a")
    out = tmp_path / "out"
    assert (out / "saved_model.pb").read_bytes() == b"pb"
    card = json.loads((out / "model_card.json").read_text())
    assert result["card"] == [str(out / "model_card.json"), str(out / "model_card.md")]
    assert (card["model"], card["version"], card["aliases"], card["exported_for"]) == (
        "flu", 1, ["production"], "hospital-a")
    assert card["access"] == ["site:hospital-a", "site:hospital-b"]
    assert missing_fields(card["lineage"]) == []
    assert card["evaluations"][0]["dataset"] == EVAL[0] and card["evaluations"][0]["metrics"] == {"accuracy": 0.8}
    markdown = (out / "model_card.md").read_text()
    for text in ("# Model card: flu:1", "hospital-a/train:1", "sha256:hospital-b-train", "Epsilon: 12.5",
                 "site:hospital-b", "accuracy 0.8", "site dataset (site-level)"):
        assert text in markdown, text
    actions = [(e["action"], e["subject"]) for e in registry.list_audit()]
    assert ("model.export", "flu:1") in actions and ("model.alias", "flu:1") in actions


def test_keras_export_puts_the_card_next_to_the_file(registry, tmp_path):
    add_version(registry, tmp_path)
    export_version(registry, "flu", tmp_path / "m.keras", fmt="keras")
    assert (tmp_path / "m.keras").read_bytes() == b"keras"
    assert json.loads((tmp_path / "m.model_card.json").read_text())["exported_for"] is None
    assert (tmp_path / "m.model_card.md").is_file()


def test_versions_from_before_lineage_get_their_sites_access(tmp_path):
    """m005 gives existing versions the sites of their datasets (and an empty lineage)."""
    import sqlite3

    from tffprod.registry.migrations import MIGRATIONS

    path = tmp_path / "old.db"
    with Registry.open(path) as registry:
        add_version(registry, tmp_path)
    with sqlite3.connect(path) as conn:  # pretend the version predates m005
        conn.execute("UPDATE model_versions SET lineage = NULL, access = '[]'")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm005_model_registry'")
        conn.execute("DROP TABLE model_aliases")
        conn.execute("ALTER TABLE model_versions DROP COLUMN access")
        conn.execute("ALTER TABLE model_versions DROP COLUMN lineage")
        conn.execute("ALTER TABLE evaluations DROP COLUMN kind")
    with Registry.open(path) as registry:
        version = registry.get_model_version("flu:1")
        assert "m005_model_registry" in {m.name for m in MIGRATIONS.applied(registry._db)}
    assert version["access"] == ["site:hospital-a", "site:hospital-b"] and version["lineage"] == {}


# The CLI.


def test_cli_alias_access_show_and_refused_export(tmp_path, run_cli):
    path = tmp_path / "registry.db"
    with Registry.open(path) as registry:
        add_version(registry, tmp_path)
    env = {"TFFPROD_REGISTRY": str(path)}
    assert "flu@production -> flu:1" in ok(run_cli("model", "alias", "flu:1", "production", env=env))
    listed = ok(run_cli("model", "list", env=env))
    assert "production" in listed
    shown = ok(run_cli("model", "show", "flu@production", env=env))
    for text in ("aliases       production", "access        site:hospital-a, site:hospital-b", "lineage",
                 "hospital-b/train:1", "sha256:hospital-a-test", "tensorflow_federated"):
        assert text in shown, text
    assert "None" not in shown and "{" not in shown, shown  # no Python reprs in human output
    ok(run_cli("model", "access", "flu@production", "--revoke", "site:hospital-b", env=env))
    line = one_error_line(run_cli("model", "export", "flu@production", "--out", tmp_path / "x",
                                  "--for", "hospital-b", env=env), 12)
    assert "may not receive" in line and not (tmp_path / "x").exists()
    one_error_line(run_cli("model", "show", "flu@nope", env=env), 3)
    exported = json.loads(ok(run_cli("model", "export", "flu@production", "--out", tmp_path / "y",
                                     "--for", "hospital-a", "--json", env=env)))
    assert exported["for"] == "hospital-a" and (tmp_path / "y" / "model_card.md").is_file()
    assert "removed alias production" in ok(run_cli("model", "alias", "flu", "production", "--remove", env=env))
    one_error_line(run_cli("model", "show", "flu@production", env=env), 3)


def test_overall_evaluations_are_kept_apart_from_per_dataset_ones(registry, tmp_path):
    add_version(registry, tmp_path)
    registry.add_evaluation(model="flu", version=1, dataset="hospital-a/test:1,hospital-b/train:1",
                            metrics={"accuracy": 0.7}, kind="overall")
    assert [e["dataset"] for e in registry.list_evaluations("flu", 1)] == [EVAL[0]]
    assert [e["metrics"] for e in registry.list_evaluations("flu", 1, kind="overall")] == [{"accuracy": 0.7}]
    assert [e["kind"] for e in registry.list_evaluations("flu", 1, kind=None)] == ["dataset", "overall"]
    with pytest.raises(ValueError):
        registry.add_evaluation(model="flu", version=1, dataset="x", metrics={}, kind="average")


# A session's version, its evaluations and the session's end: one transaction.


def _session_version_fields(registry: Registry, tmp_path: Path) -> dict:
    first = add_version(registry, tmp_path)
    session = registry.create_session(name="flu", spec={"name": "flu", "task": TASK}, task={"name": "digits"},
                                      backend="local", rounds_planned=3, datasets=TRAIN)
    registry.start_session(session["id"])
    return dict(name="flu", session_id=session["id"], artifact_path=first["artifact_path"], metrics={},
                dp={}, epsilon=None, delta=None, datasets=TRAIN, task={"name": "digits"}, lineage=first["lineage"])


def test_a_version_that_finishes_its_session_records_everything_at_once(registry, tmp_path):
    fields = _session_version_fields(registry, tmp_path)
    evaluations = [{"dataset": EVAL[0], "metrics": {"accuracy": 0.9}},
                   {"dataset": EVAL[0], "metrics": {"accuracy": 0.9}, "kind": "overall"}]
    version = registry.add_model_version(**fields, evaluations=evaluations, finishes_session=True)
    assert version["version"] == 2 and version["session_id"] == fields["session_id"]
    assert registry.get_session(fields["session_id"])["status"] == "finished"
    assert [(e["dataset"], e["kind"], e["session_id"]) for e in registry.list_evaluations("flu", 2, kind=None)] == \
        [(EVAL[0], "dataset", fields["session_id"]), (EVAL[0], "overall", fields["session_id"])]

    # A resumed coordinator that gets here again registers no second version.
    with pytest.raises(RegistryError, match=rf"session {fields['session_id']} already produced model version flu:2"):
        registry.add_model_version(**fields, finishes_session=True)
    assert [v["version"] for v in registry.list_model_versions("flu")] == [1, 2]


def test_a_failed_evaluation_leaves_neither_version_nor_finished_session(registry, tmp_path):
    fields = _session_version_fields(registry, tmp_path)
    with pytest.raises(ValueError, match="evaluation kind"):
        registry.add_model_version(**fields, evaluations=[{"dataset": EVAL[0], "metrics": {}, "kind": "average"}],
                                   finishes_session=True)
    assert [v["version"] for v in registry.list_model_versions("flu")] == [1]
    assert registry.get_session(fields["session_id"])["status"] == "running"


def test_a_session_card_says_which_round_it_is_and_that_it_is_no_registered_version():
    from tffprod.models.card import card_markdown, session_card

    session = {"id": "s-1", "name": "flu", "backend": "remote", "rounds_planned": 20, "task": {"path": "t:task"},
               "spec": {"dp": {"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5}},
               "privacy": {"unit": "site dataset (site-level)"}}
    last = {"round_num": 7, "recorded_at": "2026-12-01T05:00:00+00:00", "epsilon": 3.5, "metrics": {"loss": 0.25},
            "participants": [{"site": "b", "status": "ok"}, {"site": "a", "status": "ok"},
                             {"site": "c", "status": "timeout"}]}
    rows = [{"ref": "a/train:1", "num_examples": 10, "content_hash": "sha256:x"}]
    card = session_card(session, last, rows)
    assert (card["epsilon"], card["delta"]) == (3.5, 1e-5) and card["lineage"]["sites"] == ["a", "b"]
    text = card_markdown(card)
    assert "# Model card: flu:session s-1, round 7 (not a registered version)" in text
    assert "- Rounds: 7 of 20 planned" in text and "| a/train:1 | train | 10 | sha256:x |" in text
    assert "- Epsilon: 3.5, delta: 1e-05" in text and "loss 0.25" in text
    no_dp = session_card({**session, "spec": {}}, {**last, "epsilon": None}, rows)
    assert (no_dp["epsilon"], no_dp["delta"]) == (None, None) and "- DP: none" in card_markdown(no_dp)
