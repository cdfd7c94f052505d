"""Dataset versions: a changed file is a new version, and `dataset show` says which sessions used each."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tffprod.cli.main import cli
from tffprod.registry import Registry

SCHEMA = {"features": [{"name": "amount", "dtype": "float32"}], "label": {"name": "is_fraud", "dtype": "int64"}}


def test_versions_and_the_sessions_that_used_them(tmp_path):
    db = str(tmp_path / "r.db")
    data = tmp_path / "train.csv"
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))

    def register() -> dict:
        result = CliRunner().invoke(cli, ["dataset", "register", "bank-a/train", str(data), "--schema",
                                          str(schema), "--registry", db, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    data.write_text("amount,is_fraud\n1.0,0\n2.0,1\n")
    assert register()["version"] == 1
    with Registry.open(db) as registry:
        used = registry.create_session(name="s", spec={"task": "t"}, task={}, backend="local", rounds_planned=1,
                                       datasets=["bank-a/train:1"])
    assert register()["version"] == 1  # same content: same version
    data.write_text("amount,is_fraud\n1.0,0\n2.0,1\n3.0,0\n")
    assert register()["version"] == 2  # the content hash changed: a new version

    shown = CliRunner().invoke(cli, ["dataset", "show", "bank-a/train", "--registry", db, "--json"])
    versions = json.loads(shown.output)["versions"]
    assert [(v["version"], v["num_examples"], v["sessions"]) for v in versions] == [
        (1, 2, [{"id": used["id"], "status": "pending"}]), (2, 3, [])]
    assert versions[0]["content_hash"] != versions[1]["content_hash"]
    text = CliRunner().invoke(cli, ["dataset", "show", "bank-a/train", "--registry", db]).output
    assert f"sessions: {used['id']} (pending)" in text and "no session yet" in text
