"""Federations on the coordinator (registry, CLI, spec) and in site configs and plans; TF-free."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tffprod.cli.main import cli
from tffprod.errors import SpecError
from tffprod.errors import PlanError
from tffprod.executors.approvals import approve
from tffprod.protocol.plan_document import canonical_id, load_plan
from tffprod.registry import Registry
from tffprod.sessions.spec import SessionSpec

from tests.helpers.plans import SITE, catalog, plan_document, site_toml, write


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_federation_commands(tmp_path):
    db = str(tmp_path / "r.db")
    with Registry.open(db) as registry:
        registry.add_site("hospital-a", address="127.0.0.1:1")
    assert run("federation", "create", "hospitals", "--registry", db).exit_code == 0
    added = run("federation", "add-site", "hospitals", "hospital-a", "--registry", db, "--json")
    assert added.exit_code == 0 and json.loads(added.output)["sites"] == ["hospital-a"]
    listed = run("federation", "list", "--registry", db)
    assert listed.output.strip() == "hospitals: hospital-a"
    unknown_site = run("federation", "add-site", "hospitals", "hospital-z", "--registry", db)
    assert unknown_site.exit_code == 3 and "no site named 'hospital-z'" in unknown_site.output
    unknown = run("federation", "add-site", "nope", "hospital-a", "--registry", db)
    assert unknown.exit_code == 3 and "no federation named 'nope'" in unknown.output
    bad = run("federation", "create", "Bad Name", "--registry", db)
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1
    removed = run("federation", "remove-site", "hospitals", "hospital-a", "--registry", db, "--json")
    assert json.loads(removed.output)["sites"] == []
    with Registry.open(db) as registry:
        actions = [(e["action"], e["subject"]) for e in registry.list_audit()]
    assert actions[:3] == [("federation.remove-site", "hospitals"), ("federation.add-site", "hospitals"),
                           ("federation.create", "hospitals")]


def test_a_spec_names_its_federation():
    fields = {"name": "s", "task": "tffprod.examples.digits:task", "datasets": ["a/train"], "rounds": 1}
    assert SessionSpec.from_dict({**fields, "federation": "hospitals"}).to_dict()["federation"] == "hospitals"
    assert "federation" not in SessionSpec.from_dict(fields).to_dict()
    with pytest.raises(SpecError, match="federation name 'X' must start"):
        SessionSpec.from_dict({**fields, "federation": "X"})


def _plan_for(tmp_path, federation):
    document = plan_document()
    body = {k: v for k, v in document.items() if k != "plan_id"}
    body["session"]["federation"] = federation
    return load_plan(write(tmp_path, {**body, "plan_id": canonical_id(body)}))


def test_a_site_approves_only_plans_of_its_federations(tmp_path):
    rivals = _plan_for(tmp_path, "rivals")
    with pytest.raises(PlanError, match="is for federation 'rivals'; site bank-a serves only hospitals"):
        approve(rivals, site=SITE, catalog=catalog(), state_dir=tmp_path / "s", federations=("hospitals",))
    approval = approve(_plan_for(tmp_path, "hospitals"), site=SITE, catalog=catalog(), state_dir=tmp_path / "s",
                       federations=("hospitals",))
    assert approval.allows("coordinator", "hospitals") and not approval.allows("coordinator", "rivals")
    assert not approval.allows("coordinator", None)


@pytest.mark.parametrize("value, error", [
    ('["hospitals", "trials"]', None),
    ('"hospitals"', "'federations' must be a non-empty list of federation names, got string 'hospitals'"),
    ("[]", "'federations' must be a non-empty list"),
    ('["Bad"]', "federation name 'Bad' must start"),
])
def test_site_config_federations(tmp_path, value, error):
    from tffprod.executors.config import load_site_config

    config = site_toml(tmp_path, f"federations = {value}\n")
    if error is None:
        assert load_site_config(config).federations == ("hospitals", "trials")
    else:
        with pytest.raises(SpecError, match=error.replace("(", "\\(").replace("[", "\\[")):
            load_site_config(config)
