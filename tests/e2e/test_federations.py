"""Federations with a real site process: the site refuses calls for a federation it does not serve."""

from __future__ import annotations

import pytest

from tffprod.backends import create_backend
from tffprod.errors import DatasetError, SchemaMismatchError, SessionError, SpecError
from tffprod.examples import digits, fraud
from tffprod.sessions.runner import train
from tffprod.sites.admin import check_site, sync_site
from tffprod.sessions.spec import SessionSpec

from .conftest import running_federation

pytestmark = pytest.mark.e2e

TASK = "tffprod.examples.digits:task"
SITE = digits.SITES[0]


def _spec(federation):
    return SessionSpec.from_dict({"name": f"digits-{federation}", "task": TASK, "datasets": [f"{SITE}/train"],
                                  "rounds": 1, "seed": 0, "round_timeout_s": 120.0, "federation": federation})


def test_a_site_serves_only_its_federations(tmp_path):
    paths = digits.prepare(tmp_path / "data")
    bank = fraud.prepare(tmp_path / "fraud", n_per_bank=200)["bank-a"]
    datasets = {SITE: {"train": {"path": paths[SITE]["train"], "task": TASK},
                       "claims": {"path": bank["train"], "task": "tffprod.examples.fraud:task"}}}
    with running_federation(tmp_path, datasets, federations=["hospitals"]) as (fed, registry):
        assert check_site(registry, SITE)["ok"]  # site info needs no federation
        for name in ("hospitals", "rivals"):
            registry.create_federation(name)
            registry.add_federation_site(name, SITE)
        # The coordinator's registry says the site is in "rivals"; the site itself says no.
        with pytest.raises(SessionError, match="PERMISSION_DENIED: site hospital-a does not serve federation "
                                               "'rivals' \\(it serves: hospitals\\)"):
            train(_spec("rivals"), registry=registry, backend=create_backend("remote", registry=registry))
        result = train(_spec("hospitals"), registry=registry, backend=create_backend("remote", registry=registry))
        assert result["status"] == "finished" and result["spec"]["federation"] == "hospitals"
        # A session may not pick data outside its federation: refused before anything runs.
        registry.remove_federation_site("rivals", SITE)
        sessions_before = len(registry.list_sessions())
        with pytest.raises(SpecError, match=f"is at site {SITE}, which is not in federation 'rivals'"):
            train(_spec("rivals"), registry=registry, backend=create_backend("remote", registry=registry))
        assert len(registry.list_sessions()) == sessions_before
        # The data contract: a site dataset whose schema is not the task's is caught before round 1.
        mismatch = SessionSpec.from_dict({**_spec("hospitals").to_dict(), "datasets": [f"{SITE}/claims"]})
        with pytest.raises(SchemaMismatchError, match=f"dataset {SITE}/claims:1: label is 'is_fraud', the task "
                                                      "expects 'digit'"):
            train(mismatch, registry=registry, backend=create_backend("remote", registry=registry))
        assert len(registry.list_sessions()) == sessions_before
        # A changed file at the site is a new dataset version; sessions keep the version they used.
        old = paths[SITE]["train"].read_bytes()
        fed.stop_site(SITE)
        paths[SITE]["train"].write_bytes(paths[SITE]["test"].read_bytes())
        fed.start_site(SITE)
        with pytest.raises(DatasetError, match="changed at site"):  # the old version is not trained on blindly
            train(_spec("hospitals"), registry=registry, backend=create_backend("remote", registry=registry))
        synced = {row["ref"] for row in sync_site(registry, SITE)}
        assert f"{SITE}/train:2" in synced
        versions = registry.dataset_versions(f"{SITE}/train")
        finished = [[u["id"] for u in v["sessions"] if u["status"] == "finished"] for v in versions]
        assert finished == [[result["id"]], []] and [v["version"] for v in versions] == [1, 2]
        assert versions[0]["content_hash"] != versions[1]["content_hash"] and old
