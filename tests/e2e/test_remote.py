"""Real multi-site training: site processes (gateway + worker) on loopback, mTLS, tokens."""

from __future__ import annotations

import numpy as np
import pytest

from tffprod.backends import create_backend
from tffprod.backends.local import LocalBackend
from tffprod.data.register import register_dataset
from tffprod.errors import DatasetError
from tffprod.examples import digits
from tffprod.models.export import load_weights
from tffprod.registry import Registry
from tffprod.sessions.runner import train
from tffprod.errors import SiteCheckError
from tffprod.sites.admin import add_site, check_site
from tffprod.sessions.spec import SessionSpec

from .conftest import running_federation

pytestmark = pytest.mark.e2e

TASK = "tffprod.examples.digits:task"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    return root, digits.prepare(root / "data")


@pytest.fixture(scope="module")
def federation(data):
    root, paths = data
    datasets = {site: {split: {"path": paths[site][split], "task": TASK} for split in ("train", "test")}
                for site in digits.SITES}
    with running_federation(root, datasets) as (fed, registry):
        yield fed, registry


def _spec(name, *, rounds=2, min_sites=1, dp=None, eval_sites=digits.SITES):
    data = {"name": name, "task": TASK, "datasets": [f"{s}/train" for s in digits.SITES],
            "eval_datasets": [f"{s}/test" for s in eval_sites], "rounds": rounds, "seed": 0,
            "min_sites": min_sites, "round_timeout_s": 120.0}
    if dp:
        data["dp"] = dp
    return SessionSpec.from_dict(data)


def test_sites_check_and_their_catalogs_arrive_without_paths(federation):
    fed, registry = federation
    for site in digits.SITES:
        report = check_site(registry, site)
        assert report["ok"], report["problems"]
        assert sorted(report["catalog"]) == ["test", "train"]
        assert report["health"]["worker"] == "up"
    rows = registry.list_datasets()
    assert sorted(r["ref"] for r in rows) == sorted(f"{s}/{d}:1" for s in digits.SITES for d in ("test", "train"))
    assert all(r["path"] == f"site://{r['site']}/{r['name']}" for r in rows)


def test_remote_training_equals_local_training_without_dp(federation, data, tmp_path):
    fed, remote_registry = federation
    root, paths = data
    remote = train(_spec("digits-remote"), registry=remote_registry,
                   backend=create_backend("remote", registry=remote_registry))
    with Registry.open(tmp_path / "local.db") as local_registry:
        for site in digits.SITES:
            for split in ("train", "test"):
                register_dataset(local_registry, f"{site}/{split}", paths[site][split], schema=digits.SCHEMA)
        local = train(_spec("digits-remote"), registry=local_registry, backend=LocalBackend())
    w_remote = load_weights(remote["model_version"]["artifact_path"]).trainable
    w_local = load_weights(local["model_version"]["artifact_path"]).trainable
    for a, b in zip(w_remote, w_local):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert remote["model_version"]["metrics"]["eval"] == pytest.approx(local["model_version"]["metrics"]["eval"])
    rounds = remote_registry.list_rounds(remote["id"])
    assert all(p["status"] == "ok" for r in rounds for p in r["participants"])


def test_a_wrong_token_is_refused_and_the_site_keeps_serving(federation, tmp_path):
    fed, registry = federation
    bad_token = tmp_path / "bad-token"
    bad_token.write_text("not-the-token\n")
    coordinator = fed.certs_dir / "coordinator"
    with Registry.open(tmp_path / "other.db") as other:
        add_site(other, "hospital-a", address=fed.addresses["hospital-a"], ca=coordinator / "ca.crt",
                 cert=coordinator / "coordinator.crt", key=coordinator / "coordinator.key", token_file=bad_token)
        with pytest.raises(SiteCheckError, match="UNAUTHENTICATED"):
            check_site(other, "hospital-a")
    assert check_site(registry, "hospital-a")["ok"]


def test_a_dataset_the_site_does_not_serve_is_refused_before_training(federation):
    fed, registry = federation
    real = registry.get_dataset("hospital-b/train")
    registry.add_dataset(site="hospital-b", name="ghost", path="site://hospital-b/ghost", format="tfrecord",
                         schema=real["schema"], num_examples=10, content_hash="sha256:" + "0" * 64)
    spec = SessionSpec.from_dict({"name": "ghost", "task": TASK, "datasets": ["hospital-b/ghost"], "rounds": 1})
    with pytest.raises(DatasetError, match="no longer serves 'ghost'"):
        train(spec, registry=registry, backend=create_backend("remote", registry=registry))


def test_untrusted_certificates_plaintext_and_garbage_are_refused_and_the_site_keeps_serving(federation, tmp_path):
    import datetime
    import os
    import socket

    import grpc

    from tffprod.security.certs import init_ca, issue
    from tffprod.protocol.siteinfo import fetch_site_info

    fed, registry = federation
    address = fed.addresses["hospital-a"]
    trusted_ca = fed.certs_dir / "coordinator" / "ca.crt"
    token_file = fed.token_file("hospital-a")
    init_ca(tmp_path / "rogue-ca")
    rogue = issue("coordinator", ca_dir=tmp_path / "rogue-ca", out_dir=tmp_path / "rogue")
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = issue("coordinator", ca_dir=fed.certs_dir / "ca", out_dir=tmp_path / "expired",
                    not_before=now - datetime.timedelta(days=10), not_after=now - datetime.timedelta(days=1))
    for name, files in (("another CA", rogue), ("expired", expired)):
        with Registry.open(tmp_path / f"{files.cert.stem}-{name}.db") as other:
            add_site(other, "hospital-a", address=address, ca=trusted_ca, cert=files.cert, key=files.key,
                     token_file=token_file)
            with pytest.raises(SiteCheckError, match="no TLS connection"):
                check_site(other, "hospital-a")

    plain = grpc.insecure_channel(address)
    try:
        with pytest.raises(grpc.RpcError) as info:
            fetch_site_info(plain, token_file.read_text().strip(), timeout_s=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        plain.close()

    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(os.urandom(4096))
    assert check_site(registry, "hospital-a")["ok"]


def test_site_commands_through_the_cli(federation, tmp_path):
    import json
    import time
    from pathlib import Path

    from click.testing import CliRunner

    from tffprod.cli.main import cli

    fed, registry = federation
    runner = CliRunner()
    db = registry.path
    listed = json.loads(runner.invoke(cli, ["site", "list", "--json", "--registry", db]).output)
    assert sorted(s["name"] for s in listed) == sorted(digits.SITES)
    tokens = [fed.token_file(site).read_text().strip() for site in digits.SITES]
    assert not any(token in json.dumps(listed) for token in tokens)  # secrets stay in their files
    wal = Path(db + "-wal")
    registry_bytes = Path(db).read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert len(registry_bytes) > 0
    assert not any(token.encode() in registry_bytes for token in tokens)
    checked = runner.invoke(cli, ["site", "check", "--all", "--json", "--registry", db])
    assert checked.exit_code == 0, checked.output
    assert [r["ok"] for r in json.loads(checked.output)] == [True] * len(digits.SITES)
    synced = runner.invoke(cli, ["site", "sync", "hospital-b", "--json", "--registry", db])
    assert synced.exit_code == 0
    assert sorted(r["ref"] for r in json.loads(synced.output)) == ["hospital-b/test:1", "hospital-b/train:1"]
    # A site that is not running: one line, exit 8.
    other = tmp_path / "down.db"
    coordinator = fed.certs_dir / "coordinator"
    runner.invoke(cli, ["site", "add", "nowhere", "--address", "127.0.0.1:9", "--ca", str(coordinator / "ca.crt"),
                        "--cert", str(coordinator / "coordinator.crt"), "--key", str(coordinator / "coordinator.key"),
                        "--token-file", str(fed.token_file("hospital-a")), "--registry", str(other)])
    down = runner.invoke(cli, ["site", "check", "nowhere", "--registry", str(other)])
    assert down.exit_code == 8 and "no TLS connection to 127.0.0.1:9" in down.output
    started = time.monotonic()  # --wait tries again for that long, then says so in one line
    waited = runner.invoke(cli, ["site", "check", "nowhere", "--wait", "3", "--registry", str(other)])
    assert 3 <= time.monotonic() - started < 10
    assert waited.exit_code == 8 and "no TLS connection to 127.0.0.1:9 within 3 s" in waited.output
    assert len(waited.output.strip().splitlines()) == 1


def test_a_site_killed_mid_session(federation):
    """Last in this module: it leaves two sites down.

    min_sites still holds: the session finishes without it; then it does not: the session fails."""
    from tffprod.errors import SessionError

    fed, registry = federation

    def kill_c_after_round_1(report):
        if report.round_num == 1:
            fed.stop_site("hospital-c", kill=True)

    spec = _spec("digits-churn", rounds=3, min_sites=2, eval_sites=("hospital-a", "hospital-b"))
    result = train(spec, registry=registry, backend=create_backend("remote", registry=registry),
                   progress=kill_c_after_round_1)
    assert result["status"] == "finished" and result["rounds_completed"] == 3
    later = [{p["site"]: p["status"] for p in r["participants"]} for r in registry.list_rounds(result["id"])[1:]]
    assert all(r["hospital-c"] in ("error", "timeout") and r["hospital-a"] == "ok" for r in later)

    fed.start_site("hospital-c")  # back on the same address
    assert check_site(registry, "hospital-c")["ok"]

    def kill_b_after_round_1(report):
        if report.round_num == 1:
            fed.stop_site("hospital-b", kill=True)

    spec = _spec("digits-quorum", rounds=3, min_sites=3, eval_sites=("hospital-a",))
    with pytest.raises(SessionError, match="round needs 3 site"):
        train(spec, registry=registry, backend=create_backend("remote", registry=registry),
              progress=kill_b_after_round_1)
    (failed,) = [s for s in registry.list_sessions(status="failed") if s["name"] == "digits-quorum"]
    assert failed["rounds_completed"] == 1 and "hospital-b" in failed["error"]
    fed.stop_site("hospital-c")  # the restarted site belongs to this test


def test_a_plan_simulated_locally_gives_the_weights_its_approving_sites_release(data, tmp_path):
    """The local backend runs a plan on the sites' own release path (simulated sites): the same
    weights and evaluation as real sites that approved the plan."""
    from click.testing import CliRunner

    from tffprod.cli.main import cli
    from tffprod.sessions.approval import coordinator_identities, make_plan, write_plan
    from tffprod.sessions.runner import train_from_plan
    from tffprod.sessions.planning import plan_session

    root, paths = data
    sites = digits.SITES[:2]
    datasets = {site: {split: {"path": paths[site][split], "task": TASK} for split in ("train", "test")}
                for site in sites}
    spec = SessionSpec.from_dict({"name": "digits-plan", "task": TASK, "datasets": [f"{s}/train" for s in sites],
                                  "eval_datasets": [f"{s}/test" for s in sites], "rounds": 2, "seed": 0,
                                  "round_timeout_s": 120.0})
    with running_federation(tmp_path / "fed", datasets, computations="approved") as (fed, remote_registry):
        session = plan_session(spec, registry=remote_registry)
        plan_path = write_plan(make_plan(session, coordinators=coordinator_identities(remote_registry, sites)),
                               tmp_path / "plan.json")
        for site in sites:
            approved = CliRunner().invoke(cli, ["site", "approve", str(plan_path), "--config",
                                                str(fed.site_config_path(site))])
            assert approved.exit_code == 0, approved.output
        remote = train_from_plan(plan_path, registry=remote_registry,
                                 backend=create_backend("remote", registry=remote_registry))
    with Registry.open(tmp_path / "local.db") as local_registry:
        for site in sites:
            for split in ("train", "test"):
                register_dataset(local_registry, f"{site}/{split}", paths[site][split], schema=digits.SCHEMA)
        backend = LocalBackend(log_dir=tmp_path / "local-workers")
        local = train_from_plan(plan_path, registry=local_registry, backend=backend)
    w_remote = load_weights(remote["model_version"]["artifact_path"]).trainable
    w_local = load_weights(local["model_version"]["artifact_path"]).trainable
    for a, b in zip(w_remote, w_local, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert remote["model_version"]["metrics"]["eval"] == pytest.approx(local["model_version"]["metrics"]["eval"])
    for site in sites:  # the simulated sites kept their own ledgers, as the real ones did
        state = tmp_path / "local-workers" / f"site-{site}-state"
        assert (state / "privacy-ledger.sqlite").is_file() and list((state / "approvals").glob("*.json"))
