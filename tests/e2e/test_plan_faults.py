"""Fault injection under an approved plan: the coordinator dies after the sites released a round.

The sites' own ledgers saw round 2 leave before the coordinator could commit it.
Resuming re-sends round 2 with the same state and clients: each site counts it once
(an identical repeat), so the sites, the coordinator and the plan all agree on
three rounds and one epsilon.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tffprod.privacy.accounting import epsilon_for
from tffprod.cli.main import cli
from tffprod.examples import digits
from tffprod.executors.approvals import ApprovalStore
from tffprod.protocol.plan_document import load_plan
from tffprod.executors.config import load_site_config
from tffprod.executors.ledger import LEDGER_FILE, SiteLedger
from tffprod.sessions.approval import coordinator_identities, make_plan, write_plan
from tffprod.sessions.planning import plan_session
from tffprod.sessions.spec import SessionSpec

from .conftest import running_federation

pytestmark = pytest.mark.e2e

TASK = "tffprod.examples.digits:task"
SITES = digits.SITES[:2]
ROUNDS, Z, DELTA = 3, 1.0, 1e-5
TFFPROD = str(Path(sys.executable).parent / "tffprod")


def _served_and_spent(fed, site: str, plan_id: str) -> tuple[int, float]:
    config = load_site_config(fed.site_config_path(site))
    ledger = SiteLedger(config.state_dir / LEDGER_FILE, site=site, budgets={})
    try:
        epsilon, _ = ledger.spent("train", ApprovalStore(config.state_dir).all())
        return ledger.served(plan_id), epsilon
    finally:
        ledger.close()


def _cli(registry_path: Path, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TFFPROD_CRASH_AT"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", GRPC_VERBOSITY="ERROR")
    if crash_at:
        env["TFFPROD_CRASH_AT"] = crash_at
    return subprocess.run([TFFPROD, *args, "--registry", str(registry_path)], capture_output=True, text=True,
                          timeout=600, env=env)


def test_a_plan_resumed_after_the_sites_released_the_lost_round_counts_it_once(tmp_path, fault_tally):
    paths = digits.prepare(tmp_path / "data")
    datasets = {site: {"train": {"path": paths[site]["train"], "task": TASK}} for site in SITES}
    with running_federation(tmp_path, datasets, computations="approved") as (fed, registry):
        spec = SessionSpec.from_dict({
            "name": "digits-plan-crash", "task": TASK, "datasets": [f"{s}/train" for s in SITES],
            "rounds": ROUNDS, "seed": 0, "min_sites": len(SITES), "round_timeout_s": 120.0, "backend": "remote",
            "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA}})
        plan_path = tmp_path / "plan.json"
        write_plan(make_plan(plan_session(spec, registry=registry),
                             coordinators=coordinator_identities(registry, SITES)), plan_path)
        plan_id = load_plan(plan_path).plan_id
        for site in SITES:
            approved = CliRunner().invoke(cli, ["site", "approve", str(plan_path), "--config",
                                                str(fed.site_config_path(site))])
            assert approved.exit_code == 0, approved.output
        registry_path = Path(registry.path)

        crashed = _cli(registry_path, "session", "run", "--plan", str(plan_path), crash_at="checkpoint-written:2")
        fault_tally["faults"] += 1
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        (session,) = registry.list_sessions(status="running")
        assert session["rounds_completed"] == 1
        assert all(_served_and_spent(fed, site, plan_id)[0] == 2 for site in SITES)  # round 2 left each site

        without_plan = _cli(registry_path, "session", "resume", session["id"])
        assert without_plan.returncode == 6 and "--plan" in without_plan.stderr
        resumed = _cli(registry_path, "session", "resume", session["id"], "--plan", str(plan_path), "--json")
        assert resumed.returncode == 0, resumed.stderr
        fault_tally["completed"] += 1
        result = json.loads(resumed.stdout)
        rounds = [r["round_num"] for r in registry.list_rounds(session["id"])]
        fault_tally["double"] += len(rounds) - len(set(rounds))
        assert result["status"] == "finished" and rounds == list(range(1, ROUNDS + 1))

        expected = epsilon_for(noise_multiplier=Z, rounds=ROUNDS, delta=DELTA)
        assert result["model_version"]["epsilon"] == pytest.approx(expected, rel=1e-9)
        for site in SITES:
            served, spent = _served_and_spent(fed, site, plan_id)
            fault_tally["double"] += max(0, served - ROUNDS)
            assert served == ROUNDS and spent == pytest.approx(expected, rel=1e-6), site
