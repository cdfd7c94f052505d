"""Noise added at the site, against a coordinator with valid credentials, on real site processes.

Three real ``tffprod site serve`` processes (mTLS, ``computations = "approved"``) hold the digits
data. Two plans over all three sites differ only in where the noise goes: ``coordinator`` (the
sites release their un-noised clipped sums) and ``distributed`` over the three sites (each adds
noise of stddev ``z * clip / sqrt(3)``: the least noise a single release carries in any placement
at the sites). The coordinator talks to hospital-a with its own certificate and token.

The weight trap (Boenisch et al. 2021, "When the curious abandon honesty"): the coordinator sends
model weights in which each first-layer unit fires for about one training example; the update of a
unit that fired for a single example x is proportional to (x, 1) in (kernel column, bias), so
kernel column / bias gives x back. The measure: the RMS pixel distance (pixels in [0, 1]) from a
candidate, clipped to the pixel range, to its nearest training example at the site. The baseline:
as many real digit images from the other sites, which the coordinator could simply guess.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from tffprod.backends import create_backend
from tffprod.cli.main import cli
from tffprod.data.tfdata import read_examples
from tffprod.examples import digits
from tffprod.executors.audit import AUDIT_FILE, read_audit_log
from tffprod.executors.config import load_site_config
from tffprod.executors.release import RELEASE_METHOD
from tffprod.privacy.terms import plan_epsilon, release_epsilon
from tffprod.protocol import release_pb2
from tffprod.protocol.plan_document import load_plan
from tffprod.protocol.tensors import from_numpy, to_numpy
from tffprod.protocol.terms import ReleaseTerms
from tffprod.sessions.approval import coordinator_identities, make_plan, write_plan
from tffprod.sessions.planning import plan_session
from tffprod.sessions.runner import train_from_plan
from tffprod.sessions.spec import SessionSpec
from tffprod.sites.connection import SiteConnection

from .conftest import running_federation

pytestmark = pytest.mark.e2e

DATA_TASK = "tffprod.examples.digits:task"  # the sites' catalogs: the digits schema
TRAP_TASK = "tests.helpers.trap_task:task"  # the same schema, 128 first-layer units
SITES = digits.SITES
TARGET = SITES[0]
Z, CLIP, DELTA = 1.0, 1.0, 1e-5
SIGMA = Z * CLIP / math.sqrt(len(SITES))  # each site's share in the distributed plan
TEST_BUDGET = 10.0  # the test sets' budgets: they are only evaluated, under noise


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("site-noise")
    paths = digits.prepare(root / "data")
    datasets = {site: {"train": {"path": paths[site]["train"], "task": DATA_TASK},
                       "test": {"path": paths[site]["test"], "task": DATA_TASK,
                                "budget": {"epsilon": TEST_BUDGET, "delta": 1e-3}}} for site in SITES}
    with running_federation(root, datasets, computations="approved") as (fed, registry):
        yield fed, registry, paths, root


def _plan(federation, name: str, placement: str, *, task: str = TRAP_TASK, rounds: int = 2):
    fed, registry, _, root = federation
    spec = SessionSpec.from_dict({
        "name": name, "task": task, "datasets": [f"{s}/train" for s in SITES], "rounds": rounds, "seed": 0,
        "min_sites": len(SITES), "round_timeout_s": 120.0, "backend": "remote",
        "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": CLIP, "delta": DELTA,
               "noise_placement": placement}})
    document = make_plan(plan_session(spec, registry=registry), coordinators=coordinator_identities(registry, SITES))
    path = write_plan(document, root / f"{name}.json")
    for site in SITES:
        result = CliRunner().invoke(cli, ["site", "approve", str(path), "--config", str(fed.site_config_path(site))])
        assert result.exit_code == 0, result.output
    return load_plan(path)


@pytest.fixture(scope="module")
def plans(federation):
    return {placement: _plan(federation, f"trap-{placement}", placement) for placement in ("coordinator",
                                                                                          "distributed")}


@pytest.fixture(scope="module")
def channel(federation):
    _, registry, _, _ = federation
    channel = SiteConnection.from_registry(registry.get_site(TARGET)).channel()
    yield channel
    channel.close()


def _terms(plan) -> ReleaseTerms:
    entry = next(c for c in plan.computations if c["role"] == "train")
    return ReleaseTerms(entry, plan.computation_bytes("train"))


def _release(channel, plan, round_num: int, state: list) -> bytes:
    request = release_pb2.ReleaseRequest(plan_id=plan.plan_id, role="train", round=round_num, state=state,
                                         datasets=[release_pb2.DatasetSelection(name="train")])
    return channel.unary_unary(RELEASE_METHOD)(request.SerializeToString(), timeout=120)


def _bounded(plan, raw: bytes) -> list[np.ndarray]:
    """The clipped-sum tensors of a release, in order."""
    result = release_pb2.ReleaseResponse.FromString(raw).result
    return [to_numpy(result[i]).astype(np.float64) for i in _terms(plan).bounded_indices()]


def _state(plan, weights: dict[tuple, np.ndarray], seed: int = 0) -> list:
    """The free state: ``weights`` by shape where given, small random values elsewhere."""
    rng = np.random.default_rng(seed)
    return [from_numpy(weights.get(tuple(leaf.shape), rng.standard_normal(leaf.shape) * 0.05).astype(leaf.dtype))
            for leaf in _terms(plan).free]


def _pixels(path) -> np.ndarray:
    return np.stack([e["pixels"].numpy() for e in read_examples(str(path), digits.SCHEMA, "tfrecord")])


def test_the_site_adds_the_planned_noise_once_per_request(plans, channel, report_line):
    honest = {}  # random small weights: an ordinary round
    clean = _bounded(plans["coordinator"], _release(channel, plans["coordinator"], 1, _state(plans["coordinator"],
                                                                                           honest)))
    raw = _release(channel, plans["distributed"], 1, _state(plans["distributed"], honest))
    noised = _bounded(plans["distributed"], raw)
    # The same computation on the same state and data: the difference is the site's noise alone.
    noise = np.concatenate([(n - c).ravel() for n, c in zip(noised, clean)]) / SIGMA
    assert abs(noise.std() - 1) < 0.05 and abs(noise.mean()) < 0.05
    assert stats.kstest(noise, "norm").pvalue > 1e-4
    clean_norm = math.sqrt(sum(float(np.sum(c**2)) for c in clean))
    assert clean_norm <= CLIP * (1 + 1e-4)
    # The identical request again (a resumed coordinator) gets the identical bytes: no fresh noise to average.
    again = release_pb2.ReleaseResponse.FromString(
        _release(channel, plans["distributed"], 1, _state(plans["distributed"], honest)))
    assert again.repeat and list(again.result) == list(release_pb2.ReleaseResponse.FromString(raw).result)
    report_line(f"[site noise] {noise.size} noised coordinates at stddev {SIGMA:.4f} (z {Z}, clip {CLIP}, 3 sites): "
                f"measured {noise.std() * SIGMA:.4f}; clipped-sum norm {clean_norm:.3f} against noise norm "
                f"{np.linalg.norm(noise) * SIGMA:.1f}")


def _trap(public: np.ndarray, units: int, rate: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """First-layer weights in which each unit fires for about ``rate`` of images like ``public``."""
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((public.shape[1], units))
    scores = public @ kernel
    bias = -np.quantile(scores, 1 - rate, axis=0)
    return kernel.astype(np.float32), bias.astype(np.float32)


def _reconstruct(plan, raw: bytes, units: int) -> np.ndarray:
    """Candidates kernel column / bias for every unit whose bias moved."""
    tensors = _bounded(plan, raw)
    kernel = next(t for t in tensors if t.shape == (64, units))
    bias = next(t for t in tensors if t.shape == (units,))
    moved = np.abs(bias) > 0
    return (kernel[:, moved] / bias[moved]).T


def _nearest_rms(candidates: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Each candidate's RMS pixel distance to its nearest image, candidates clipped to [0, 1]."""
    guesses = np.clip(candidates, 0.0, 1.0)
    distances = np.sqrt(((guesses[:, None, :] - images[None, :, :]) ** 2).mean(axis=2))
    return distances.min(axis=1)


def test_a_weight_trap_recovers_examples_from_un_noised_releases_and_nothing_from_noised_ones(
        federation, plans, channel, report_line):
    _, _, paths, _ = federation
    private = _pixels(paths[TARGET]["train"])
    public = np.concatenate([_pixels(paths[site]["train"]) for site in SITES[1:]])
    units = 128
    kernel, bias = _trap(public, units, rate=1.0 / len(private))
    weights = {(64, units): kernel, (units,): bias}
    found = {}
    for placement, plan in plans.items():
        raw = _release(channel, plan, 2, _state(plan, weights))
        candidates = _reconstruct(plan, raw, units)
        found[placement] = _nearest_rms(candidates, private) if len(candidates) else np.array([np.inf])
    baseline = _nearest_rms(public[np.random.default_rng(2).choice(len(public), units, replace=False)], private)
    exact = int(np.sum(found["coordinator"] < 1e-3))
    # The attack works where the site adds no noise (so this test can fail) ...
    assert exact >= 10, f"the trap recovered only {exact} examples from un-noised releases"
    # ... and under the plan's noise at the site, its best candidate is no closer than the best guess.
    assert found["distributed"].min() >= baseline.min()
    report_line(f"[weight trap] un-noised release: {exact} of {units} units give a training example exactly "
                f"(RMS < 1e-3); with noise at the site (stddev {SIGMA:.3f}): best candidate RMS "
                f"{found['distributed'].min():.3f}, median {np.median(found['distributed']):.3f}; baseline "
                f"(real digits from other sites): best {baseline.min():.3f}, median {np.median(baseline):.3f}")


def test_a_session_with_distributed_noise_trains_through_three_sites(federation, report_line):
    fed, registry, _, root = federation
    plan = _plan(federation, "digits-distributed", "distributed", task=DATA_TASK, rounds=2)
    result = train_from_plan(root / "digits-distributed.json", registry=registry,
                             backend=create_backend("remote", registry=registry))
    rounds = registry.list_rounds(result["id"])
    assert len(rounds) == 2 and all(len([p for p in r["participants"] if p["status"] == "ok"]) == 3 for r in rounds)
    expected, _ = plan_epsilon(plan.privacy, 2)
    assert rounds[-1]["epsilon"] == pytest.approx(expected, rel=1e-9)
    against = result["model_version"]["dp"]["privacy"]["against_coordinator"]
    assert against["noise_placement"] == "distributed" and not against["secure_aggregation"]
    assert against["epsilon"] == pytest.approx(release_epsilon(plan.privacy, 2)[0], rel=1e-9)
    for site in SITES:
        audit = read_audit_log(load_site_config(fed.site_config_path(site)).state_dir / AUDIT_FILE)
        noised = [e["release"]["noise_stddev"] for e in audit if (e.get("release") or {}).get("plan") == plan.plan_id]
        assert noised == [pytest.approx(SIGMA)] * 2, site
    report_line(f"[site noise] 2 rounds with distributed noise over 3 real sites: epsilon {expected:.4g} "
                f"(the model's, at z {Z}); each site added stddev {SIGMA:.4f} per release")


def test_evaluation_releases_are_noised_at_the_site_and_their_epsilon_recorded(federation, report_line):
    fed, registry, _, root = federation
    spec = SessionSpec.from_dict({
        "name": "digits-eval-noise", "task": DATA_TASK, "datasets": [f"{s}/train" for s in SITES],
        "eval_datasets": [f"{s}/test" for s in SITES], "rounds": 1, "seed": 0, "backend": "remote",
        "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": CLIP, "delta": DELTA,
               "eval_noise_multiplier": 2.0}})
    document = make_plan(plan_session(spec, registry=registry), coordinators=coordinator_identities(registry, SITES))
    path = write_plan(document, root / "digits-eval-noise.json")
    for site in SITES:
        result = CliRunner().invoke(cli, ["site", "approve", str(path), "--config", str(fed.site_config_path(site))])
        assert result.exit_code == 0, result.output
    plan = load_plan(path)
    result = train_from_plan(path, registry=registry, backend=create_backend("remote", registry=registry))
    stddev = 2.0 * 16.2 * 6 ** 0.5  # 6 metric sums (accuracy, loss, examples, batches), each at most 16.2 per example
    for site in SITES:
        audit = read_audit_log(load_site_config(fed.site_config_path(site)).state_dir / AUDIT_FILE)
        evals = [e["release"] for e in audit if (e.get("release") or {}).get("plan") == plan.plan_id
                 and e["release"]["role"] == "eval"]
        assert [e["noise_stddev"] for e in evals] == [pytest.approx(stddev)], site
    evaluation = result["model_version"]["dp"]["privacy"]["evaluation"]
    assert evaluation["epsilon"] == pytest.approx(plan.privacy["evaluation"]["epsilon"], rel=1e-12)
    # The coordinator's privacy report charges each evaluation dataset its one noised release, apart from
    # training; the epsilon is an independent dp_accounting computation's.
    import dp_accounting
    from dp_accounting import rdp

    independent = rdp.RdpAccountant().compose(dp_accounting.GaussianDpEvent(2.0)).get_epsilon(DELTA)
    for site in SITES:
        (entry,) = registry.privacy_report(site=site, name="test")
        (charged,) = [e for e in entry["evaluations"] if e["session_id"] == result["id"]]
        assert charged["epsilon"] == pytest.approx(independent, rel=1e-6) and charged["releases"] == 1
        assert charged["noise_multiplier"] == 2.0 and charged["delta"] == DELTA
        assert entry["spent"]["evaluation_epsilon"] >= charged["epsilon"]
        assert not [s for s in entry["sessions"] if s["session_id"] == result["id"]]  # not a training spend
    report_line(f"[site noise] evaluation releases noised at each site (stddev {stddev:.1f} per metric sum, "
                f"z_eval 2.0): epsilon {evaluation['epsilon']:.3g} per evaluation dataset")


def test_a_budgeted_dataset_is_evaluated_only_under_a_noised_evaluation_plan(federation, tmp_path):
    """``model eval-plan --eval-noise-multiplier``: the sites noise the version's evaluation of their budgeted
    test sets and charge it, and the coordinator's privacy report shows the charge (after the session above)."""
    import json

    import dp_accounting
    from dp_accounting import rdp

    fed, registry, _, _ = federation
    ref = "digits-eval-noise:1"  # registered by the evaluation test above
    datasets = [arg for s in SITES for arg in ("--dataset", f"{s}/test")]
    common = ["--registry", str(registry.path)]
    runner = CliRunner()

    def plan(path, *noise):
        made = runner.invoke(cli, ["model", "eval-plan", ref, *datasets, "--out", str(path), *noise, *common])
        assert made.exit_code == 0, made.output
        for site in SITES:
            approved = runner.invoke(cli, ["site", "approve", str(path), "--config", str(fed.site_config_path(site))])
            assert approved.exit_code == 0, approved.output
        return load_plan(path)

    plain = plan(tmp_path / "plain.json")
    refused = runner.invoke(cli, ["eval", ref, *datasets, "--backend", "remote", "--plan", str(tmp_path / "plain.json"),
                                  *common])
    assert refused.exit_code != 0 and "releases its evaluation metrics un-noised" in refused.output
    noised = plan(tmp_path / "noised.json", "--eval-noise-multiplier", "2")
    assert noised.plan_id != plain.plan_id and noised.privacy["evaluation"]["noise_multiplier"] == 2.0
    shown = runner.invoke(cli, ["site", "plan", "show", str(tmp_path / "noised.json")]).output
    assert "privacy: evaluation metrics noised at each site (multiplier 2, at most 16.2 per example" in shown
    ran = runner.invoke(cli, ["eval", ref, *datasets, "--backend", "remote", "--plan", str(tmp_path / "noised.json"),
                              *common, "--json"])
    assert ran.exit_code == 0, ran.output
    assert not json.loads(ran.output)["errors"]
    independent = rdp.RdpAccountant().compose(dp_accounting.GaussianDpEvent(2.0)).get_epsilon(DELTA)
    for site in SITES:
        (entry,) = registry.privacy_report(site=site, name="test")
        assert [e["epsilon"] for e in entry["evaluations"] if e["plan_id"] == noised.plan_id] == \
            [pytest.approx(independent, rel=1e-6)]
        assert not [e for e in entry["evaluations"] if e["plan_id"] == plain.plan_id]  # refused: nothing released
        ledger = runner.invoke(cli, ["site", "ledger", "--config", str(fed.site_config_path(site)), "--json"])
        (budget,) = [b for b in json.loads(ledger.output)["budgets"] if b["dataset"] == "test"]
        shown = runner.invoke(cli, ["site", "ledger", "--config", str(fed.site_config_path(site))]).output
        assert f"{noised.plan_id[:16]} eval-digits-eval-noise-1: 0/0 rounds served, training without DP, " \
               f"evaluation noised (epsilon {independent:.4g} per dataset)" in shown
        assert f"{plain.plan_id[:16]} eval-digits-eval-noise-1: 0/0 rounds served, no DP (releases un-noised)" \
            in shown
        # The site's own ledger agrees with the coordinator's report: this plan and the session's evaluation.
        assert budget["spent"]["epsilon"] == pytest.approx(entry["spent"]["epsilon"], rel=1e-9)
        assert entry["spent"]["epsilon"] == pytest.approx(2 * independent, rel=1e-6)


def test_noise_at_the_sites_without_a_plan_is_refused_before_anything_is_recorded(federation):
    from tffprod.errors import SessionError
    from tffprod.sessions.runner import train

    _, registry, _, _ = federation
    spec = SessionSpec.from_dict({
        "name": "no-plan", "task": DATA_TASK, "datasets": [f"{s}/train" for s in SITES], "rounds": 1,
        "backend": "remote", "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": CLIP,
                                    "delta": DELTA, "noise_placement": "distributed"}})
    before = len(registry.list_sessions())
    with pytest.raises(SessionError, match="which they add only under a plan they approved"):
        train(spec, registry=registry, backend=create_backend("remote", registry=registry))
    assert len(registry.list_sessions()) == before
