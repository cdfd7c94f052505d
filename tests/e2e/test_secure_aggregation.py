"""Secure aggregation across three real sites (mTLS, approved plans), watched byte by byte.

A plan with ``noise_placement = "distributed"`` and ``secure_aggregation = true`` over the digits data
at three ``tffprod site serve`` processes; a twin plan with the noise at the coordinator gives each
site's clean release for the same state. The coordinator's side runs step by step
(:class:`tffprod.backends.secure_round.SecureRound` over the remote backend), with every response
from the sites recorded.
"""

from __future__ import annotations

import math
import time

import numpy as np
import psutil
import pytest
from click.testing import CliRunner
from scipy import stats

from tffprod.backends import create_backend
from tffprod.backends.secure_round import SecureRound
from tffprod.cli.main import cli
from tffprod.examples import digits
from tffprod.executors.config import load_site_config
from tffprod.executors.release import release_digest
from tffprod.executors.site_secret import load_or_create
from tffprod.privacy import discrete_gaussian
from tffprod.privacy.noise import derive_key
from tffprod.privacy.secagg import SecAggError
from tffprod.privacy.secagg.codec import encode, reduce
from tffprod.privacy.terms import plan_epsilon
from tffprod.protocol.plan_document import load_plan
from tffprod.sessions.approval import coordinator_identities, make_plan, thaw, write_plan
from tffprod.sessions.planning import plan_session
from tffprod.sessions.runner import train_from_plan
from tffprod.sessions.spec import SessionSpec
from tffprod.training.trainer import Trainer

from .conftest import running_federation, worker_children

pytestmark = pytest.mark.e2e

TASK = "tffprod.examples.digits:task"
SITES = digits.SITES
Z, CLIP, DELTA = 1.0, 1.0, 1e-5


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("secagg")
    paths = digits.prepare(root / "data")
    datasets = {site: {"train": {"path": paths[site]["train"], "task": TASK}} for site in SITES}
    with running_federation(root, datasets, computations="approved") as (fed, registry):
        yield fed, registry, root


@pytest.fixture(autouse=True)
def no_leaked_workers(federation):
    """conftest's leak check, allowing for the worker of the site this module kills and restarts:
    every new ``worker_binary`` must be the worker of a live site process."""
    fed, _, _ = federation
    before = {p.pid for p in worker_children()}
    yield
    deadline = time.monotonic() + 15
    while True:
        ours = {child.pid for pid in fed.pids().values() if pid and psutil.pid_exists(pid)
                for child in psutil.Process(pid).children(recursive=True) if child.name() == "worker_binary"}
        leaked = [p.pid for p in worker_children() if p.pid not in before | ours and p.is_running()
                  and p.status() != psutil.STATUS_ZOMBIE]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not leaked, f"test left worker processes running: {leaked}"


def _plan(federation, name: str, *, secure: bool, rounds: int = 3):
    fed, registry, root = federation
    dp = {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": CLIP, "delta": DELTA}
    if secure:
        dp.update(noise_placement="distributed", secure_aggregation=True)
    spec = SessionSpec.from_dict({"name": name, "task": TASK, "datasets": [f"{s}/train" for s in SITES],
                                  "rounds": rounds, "seed": 0, "min_sites": 2, "round_timeout_s": 120.0,
                                  "backend": "remote", "dp": dp})
    session = plan_session(spec, registry=registry)
    path = write_plan(make_plan(session, coordinators=coordinator_identities(registry, SITES)), root / f"{name}.json")
    for site in SITES:
        result = CliRunner().invoke(cli, ["site", "approve", str(path), "--config", str(fed.site_config_path(site))])
        assert result.exit_code == 0, result.output
    return session, load_plan(path)


class Recorder:
    """The remote backend's senders, recording every request sent and every response received."""

    def __init__(self, backend):
        self.backend, self.requests, self.responses = backend, {}, []

    def release(self, site):
        send = type(self.backend).release_sender(self.backend, site)

        def recorded(request):
            self.requests[site] = request
            response = send(request)
            self.responses.append(("release", site, response.SerializeToString()))
            return response

        return recorded

    def secagg(self, site):
        send = type(self.backend).secagg_sender(self.backend, site)

        def recorded(step, message):
            response = send(step, message)
            self.responses.append((step, site, response.SerializeToString()))
            return response

        return recorded


@pytest.fixture(scope="module")
def opened(federation):
    _, registry, _ = federation
    session, plan = _plan(federation, "digits-secagg", secure=True)
    clean_session, clean_plan = _plan(federation, "digits-clean", secure=False)
    backend = create_backend("remote", registry=registry)
    backend.open(session.sites, frozen=thaw(plan))
    recorder = Recorder(backend)
    backend.release_sender, backend.secagg_sender = recorder.release, recorder.secagg
    clean = create_backend("remote", registry=registry)
    clean.open(clean_session.sites, frozen=thaw(clean_plan))
    try:
        yield session, plan, backend, recorder, Trainer(session, backend, backend.frozen), clean, \
            Trainer(clean_session, clean, clean.frozen)
    finally:
        backend.close()
        clean.close()


def _send(backend):
    return lambda site, step, message: backend.secagg_sender(site)(step, message)


def _uniform_p(values: np.ndarray, bits: int, shift: int) -> float:
    """Chi-square p-value of 6-bit chunks of ``values`` (below 2**bits) starting at bit ``shift``."""
    chunks = (values >> np.uint64(shift)) & np.uint64(63)
    counts = np.bincount(chunks.astype(np.int64), minlength=64)
    return float(stats.chisquare(counts).pvalue)


def test_each_release_is_uniform_and_the_unmasked_sum_is_exactly_the_sites_noised_contributions(
        federation, opened, report_line):
    fed, _, _ = federation
    session, plan, backend, recorder, trainer, clean, clean_trainer = opened
    refs = dict(trainer.refs_by_site)
    secure = SecureRound(plan, 1, list(refs), _send(backend))
    assert sorted(secure.agree()) == sorted(SITES)
    settings = secure.settings
    masked = {}
    for site in SITES:
        masked[site] = backend.run_site(site, backend.frozen.train, trainer.state, refs[site], round_num=1,
                                        secagg=secure.input_for(site))
        secure.add_release(site, masked[site])
    decoded = secure.finish()
    bits = settings.bits
    # Every byte from the sites, captured: advertisements, shares, masked releases, unmask shares.
    steps = sorted({step for step, _, _ in recorder.responses})
    assert steps == ["advertise", "release", "share", "unmask"]
    p_values = [_uniform_p(masked[site], bits, shift) for site in SITES for shift in (0, 28, 56)]
    assert min(p_values) > 1e-6
    # Without the masks the same vectors are nowhere near uniform (small numbers and their negatives).
    total = secure.last_total
    # Each site's contribution: its clean release for the same state, quantized, plus the discrete
    # Gaussian share drawn from its own secret and the digest of the request it was sent.
    expected = np.zeros(settings.layout.length, dtype=np.uint64)
    for site in SITES:
        clean_result = clean.run_site(site, clean.frozen.train, clean_trainer.state, refs[site], round_num=1)
        leaves = [np.asarray(v) for v in _flatten(clean_result)]
        values = encode(leaves, settings.layout, scale=settings.scale, fixed_scale=settings.fixed_scale, bits=bits)
        secret = load_or_create(load_site_config(fed.site_config_path(site)).state_dir)
        digest = release_digest(recorder.requests[site], _train_sha(plan))
        values[settings.layout.dp_positions] += discrete_gaussian.sample(
            derive_key(secret, bytes.fromhex(digest)), settings.layout.dp_size, settings.share_sigma)
        expected = (expected + reduce(values, bits)) & np.uint64(2**bits - 1)
        assert _uniform_p(reduce(values, bits), bits, 56) < 1e-6  # the unmasked contribution is not uniform
    assert np.array_equal(total, expected)
    report_line(f"[secure aggregation] 3 real sites, {settings.layout.length} values mod 2^{bits} each: every masked "
                f"release uniform (min chi-square p {min(p_values):.3g} over 6-bit chunks); unmasked sum equals the "
                f"sites' quantized, noised contributions exactly; share stddev {settings.share_sigma:.4g} "
                f"(z_eff {settings.noise_multiplier:.9f})")
    assert len(decoded) == len(settings.layout.slots)


def _flatten(value):
    import tensorflow_federated as tff

    if isinstance(value, tff.structure.Struct):
        return [leaf for _, member in tff.structure.iter_elements(value) for leaf in _flatten(member)]
    return [value]


def _train_sha(plan) -> str:
    return next(c["sha256"] for c in plan.computations if c["role"] == "train")


def test_a_site_killed_after_the_masks_were_agreed_drops_out_and_its_late_release_is_refused(
        federation, opened, report_line):
    fed, _, _ = federation
    session, plan, backend, recorder, trainer, _, _ = opened
    refs = dict(trainer.refs_by_site)
    victim = SITES[2]
    secure = SecureRound(plan, 2, list(refs), _send(backend))
    assert sorted(secure.agree()) == sorted(SITES)
    fed.stop_site(victim, kill=True)
    try:
        for site in SITES[:2]:
            secure.add_release(site, backend.run_site(site, backend.frozen.train, trainer.state, refs[site],
                                                      round_num=2, secagg=secure.input_for(site)))
        leaves = secure.finish()  # the killed site's masks are removed with the others' shares
        assert all(np.isfinite(np.asarray(leaf, dtype=np.float64)).all() for leaf in leaves)
        with pytest.raises(SecAggError, match="late release"):
            secure.add_release(victim, np.zeros(secure.settings.layout.length, dtype=np.uint64))
    finally:
        fed.start_site(victim)
    report_line(f"[secure aggregation] site {victim} killed after the masks were agreed: the round's sum came from the "
                "other 2 sites; its late release was refused")


def test_a_coordinator_cannot_take_a_site_out_of_secure_aggregation(opened):
    from tffprod.backends.release import ReleaseClient
    from tffprod.errors import TffprodError
    from tffprod.protocol import release_pb2

    session, plan, backend, recorder, trainer, _, _ = opened
    site, refs = SITES[0], dict(trainer.refs_by_site)
    release = ReleaseClient(plan, backend.release_sender(site))
    result_type = backend.frozen.train.type_signature.result
    # A plain release of a plan with secure aggregation: refused, nothing leaves un-masked.
    with pytest.raises(TffprodError, match="go through secure aggregation"):
        release.release("train", 3, trainer.state, refs[site], result_type)
    # Rounds among two sites, or with a site that is not the plan's, are refused before any key is made.
    for participants in (list(SITES[:2]), list(SITES[:2]) + ["mallory"]):
        with pytest.raises(TffprodError, match="at least 3 distinct sites of the plan"):
            backend.secagg_sender(site)("advertise", release_pb2.SecAggRound(plan_id=plan.plan_id, round=3,
                                                                              participants=participants))
    # A release for a round without agreed keys finds nothing to mask with.
    missing = release_pb2.SecAggInput(round=release_pb2.SecAggRound(plan_id=plan.plan_id, round=3,
                                                                    participants=list(SITES)),
                                      survivors=list(SITES))
    with pytest.raises(TffprodError, match="no secure aggregation keys here"):
        release.release("train", 3, trainer.state, refs[site], result_type, secagg=missing)
    # A masked release is given once: the identical request again is refused, not re-masked.
    secure = SecureRound(plan, 3, list(refs), _send(backend))
    secure.agree()
    first = secure.input_for(site)
    release.release("train", 3, trainer.state, refs[site], result_type, secagg=first)
    with pytest.raises(TffprodError, match="given once under secure aggregation"):
        release.release("train", 3, trainer.state, refs[site], result_type, secagg=first)


def test_a_session_with_secure_aggregation_trains_through_three_sites(federation, report_line):
    fed, registry, root = federation
    _, plan = _plan(federation, "digits-secagg-session", secure=True, rounds=2)
    result = train_from_plan(root / "digits-secagg-session.json", registry=registry,
                             backend=create_backend("remote", registry=registry))
    rounds = registry.list_rounds(result["id"])
    assert result["status"] == "finished" and len(rounds) == 2
    expected, _ = plan_epsilon(plan.privacy, 2)
    assert rounds[-1]["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert plan.privacy["secure_aggregation"]["noise_multiplier"] == pytest.approx(Z, rel=1e-9)
    assert math.isfinite(rounds[-1]["metrics"]["client_work"]["train"]["loss"])
    report_line(f"[secure aggregation] a 2-round session through 3 real sites: epsilon {expected:.4g} at z_eff "
                f"{plan.privacy['secure_aggregation']['noise_multiplier']:.9f}")


def test_a_plan_with_secure_aggregation_over_two_sites_is_refused():
    from tffprod.errors import SpecError

    with pytest.raises(SpecError, match="at least 3 training sites"):
        SessionSpec.from_dict({"name": "two", "task": TASK, "datasets": [f"{s}/train" for s in SITES[:2]],
                               "rounds": 1, "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": CLIP,
                                                   "delta": DELTA, "noise_placement": "distributed",
                                                   "secure_aggregation": True}})



def test_the_local_backend_simulates_secure_aggregation_with_a_ca_of_its_own(tmp_path):
    from tffprod.backends.local import LocalBackend
    from tffprod.data.register import register_dataset
    from tffprod.registry import Registry
    from tffprod.sessions.runner import train

    paths = digits.prepare(tmp_path / "data")
    with Registry.open(tmp_path / "tffprod.db") as registry:
        for site in SITES:
            register_dataset(registry, f"{site}/train", paths[site]["train"], schema=digits.SCHEMA)
        spec = SessionSpec.from_dict({
            "name": "local-secagg", "task": TASK, "datasets": [f"{s}/train" for s in SITES], "rounds": 2,
            "min_sites": 3, "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": CLIP, "delta": DELTA,
                                   "noise_placement": "distributed", "secure_aggregation": True}})
        result = train(spec, registry=registry, backend=LocalBackend(log_dir=tmp_path / "logs"),
                       artifacts_dir=tmp_path / "artifacts")
        rounds = registry.list_rounds(result["id"])
    assert result["status"] == "finished" and len(rounds) == 2
    assert all(sum(p["status"] == "ok" for p in r["participants"]) == 3 for r in rounds)
    assert (tmp_path / "logs" / "secagg-ca" / "ca.crt").exists()
