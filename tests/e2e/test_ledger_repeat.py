"""A repeat of an identical training call is free at the site (resume after a coordinator crash).

One real site (gateway + worker, mTLS) requires approval of a 1-round plan. The
coordinator asks for round 1's release, "crashes", and a new coordinator (a new
backend and channel) asks for round 1 again from the checkpoint, as ``tffprod session resume`` does for
the round that was in flight: the site admits it although the plan's one round is
used, releases the same result and records one release. Any other argument is a
new round and refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from click.testing import CliRunner

from tffprod.backends import create_backend
from tffprod.training.checkpoint import load_checkpoint, save_checkpoint
from tffprod.cli.main import cli
from tffprod.examples import digits
from tffprod.executors.approvals import ApprovalStore
from tffprod.protocol.plan_document import load_plan
from tffprod.executors.audit import read_audit_log
from tffprod.executors.config import load_site_config
from tffprod.executors.ledger import LEDGER_FILE, SiteLedger
from tffprod.sessions.approval import coordinator_identities, make_plan, thaw, write_plan
from tffprod.sessions.planning import plan_session
from tffprod.sessions.spec import SessionSpec
from tffprod.training.trainer import Trainer

from .conftest import running_federation

pytestmark = pytest.mark.e2e

TASK = "tffprod.examples.digits:task"
SITE = digits.SITES[0]


def _coordinator(registry, session, frozen):
    """A new coordinator's connection to the site, asking for releases of the plan."""
    backend = create_backend("remote", registry=registry)
    backend.open(session.sites, frozen=frozen)
    return backend


def test_a_resumed_round_is_released_again_without_counting_a_new_round(tmp_path):
    paths = digits.prepare(tmp_path / "data", sites=[SITE])
    datasets = {SITE: {"train": {"path": paths[SITE]["train"], "task": TASK}}}
    with running_federation(tmp_path, datasets, computations="approved") as (fed, registry):
        spec = SessionSpec.from_dict({
            "name": "repeat", "task": TASK, "datasets": [f"{SITE}/train"], "rounds": 1, "seed": 0,
            "min_sites": 1, "round_timeout_s": 120.0, "backend": "remote",
            "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5}})
        session = plan_session(spec, registry=registry)
        plan_path = write_plan(make_plan(session, coordinators=coordinator_identities(registry, [SITE])),
                               tmp_path / "plan.json")
        approve = CliRunner().invoke(cli, ["site", "approve", str(plan_path), "--config",
                                           str(fed.site_config_path(SITE)), "--json"])
        assert approve.exit_code == 0, approve.output
        frozen = thaw(load_plan(plan_path))
        backend = _coordinator(registry, session, frozen)
        resumed = None
        try:
            trainer = Trainer(session, backend, frozen)
            refs = trainer.refs_by_site[SITE]
            first = backend.run_site(SITE, frozen.train, trainer.state, refs, round_num=1)
            # The coordinator dies before committing round 1; the resumed one restores the last checkpoint.
            checkpoint, sha256 = save_checkpoint(trainer.state, tmp_path / "checkpoints", 0)
            restored = load_checkpoint(checkpoint, sha256, trainer.state)
            resumed = _coordinator(registry, session, frozen)
            again = resumed.run_site(SITE, frozen.train, restored, refs, round_num=1)
            other = tf.nest.map_structure(lambda a: a * 0.5 if np.asarray(a).dtype == np.float32 else a, restored)
            with pytest.raises(Exception, match=r"has used all 1 approved round\(s\)"):
                resumed.run_site(SITE, frozen.train, other, refs, round_num=1)
        finally:
            backend.close()
            if resumed is not None:
                resumed.close()
        for a, b in zip(tff.structure.flatten(first), tff.structure.flatten(again), strict=True):
            np.testing.assert_array_equal(a, b)  # the same release, bit for bit
        config = load_site_config(fed.site_config_path(SITE))
        (approval,) = ApprovalStore(config.state_dir).all()
        ledger = SiteLedger(config.state_dir / LEDGER_FILE, site=SITE, budgets={})
        try:
            assert ledger.served(approval.plan_id) == 1
        finally:
            ledger.close()
        audit = list(read_audit_log(config.state_dir / "audit.jsonl"))
        releases = [line["release"] for line in audit if "release" in line]
        assert [(r["round"], r.get("repeat", False)) for r in releases] == [(1, False), (1, True)]
        refused = [line for line in audit if line["status"] == "PERMISSION_DENIED"]
        assert len(refused) == 1 and "has used all 1 approved round(s)" in refused[0]["detail"]
