"""Training sessions end to end on the local backend (real TFF, real workers, real registry)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tffprod.backends.local import LocalBackend
from tffprod.examples import digits, fraud
from tffprod.registry import Registry
from tffprod.sessions.runner import train
from tffprod.sessions.spec import SessionSpec

from .conftest import worker_children

pytestmark = pytest.mark.e2e

ROUNDS = 20


@pytest.fixture(scope="module")
def digits_registry(tmp_path_factory):
    from tffprod.data.register import register_dataset

    root = tmp_path_factory.mktemp("digits")
    paths = digits.prepare(root / "data")
    registry = Registry.open(root / "tffprod.db")
    for site in digits.SITES:
        for split in ("train", "test"):
            register_dataset(registry, f"{site}/{split}", paths[site][split], schema=digits.SCHEMA)
    yield registry, root
    registry.close()


def _spec(name, *, rounds, dp=None, datasets=None, task="tffprod.examples.digits:task", sites=digits.SITES, **extra):
    data = {
        "name": name,
        "task": task,
        "datasets": datasets or [f"{s}/train" for s in sites],
        "eval_datasets": [f"{s}/test" for s in sites],
        "rounds": rounds,
        "seed": 0,
        **extra,
    }
    if dp:
        data["dp"] = dp
    return SessionSpec.from_dict(data)


@pytest.fixture(scope="module")
def fedavg_session(digits_registry):
    registry, root = digits_registry
    backend = LocalBackend(log_dir=root / "logs")
    reports = []
    result = train(_spec("digits-fedavg", rounds=ROUNDS), registry=registry, backend=backend,
                   progress=reports.append)
    return result, reports, backend


def test_fedavg_accuracy_is_within_3_points_of_centralized(fedavg_session, digits_registry):
    from tffprod.dev.centralized import train_centrally

    result, _, _ = fedavg_session
    _, root = digits_registry
    federated = result["model_version"]["metrics"]["eval"]["sparse_categorical_accuracy"]
    central = train_centrally(
        digits.task, root / "data/central/train.tfrecord", root / "data/central/test.tfrecord",
        fmt="tfrecord", epochs=ROUNDS,
    )["sparse_categorical_accuracy"]
    print(f"\nheld-out accuracy: federated {federated:.4f}, centralized {central:.4f}")
    assert federated > 0.85
    assert abs(federated - central) <= 0.03


def test_session_rounds_and_participants_are_recorded(fedavg_session, digits_registry):
    registry, _ = digits_registry
    result, reports, _ = fedavg_session
    session = registry.get_session(result["id"])
    assert session["status"] == "finished"
    assert session["rounds_completed"] == ROUNDS
    rounds = registry.list_rounds(result["id"])
    assert [r["round_num"] for r in rounds] == list(range(1, ROUNDS + 1))
    for r in rounds:
        assert r["epsilon"] is None
        assert sorted(p["site"] for p in r["participants"]) == sorted(digits.SITES)
        assert all(p["status"] == "ok" and p["examples"] > 0 for p in r["participants"])
    train_rows = sum(registry.get_dataset(f"{s}/train")["num_examples"] for s in digits.SITES)
    assert rounds[-1]["metrics"]["client_work"]["train"]["num_examples"] == train_rows
    losses = [r.metrics["loss"] for r in reports]
    assert len(reports) == ROUNDS and losses[-1] < losses[0]


def test_per_site_evaluations_are_recorded(fedavg_session, digits_registry):
    registry, _ = digits_registry
    version = fedavg_session[0]["model_version"]
    evals = registry.list_evaluations(version["name"], version["version"])
    assert sorted(e["dataset"] for e in evals) == sorted(f"{s}/test:1" for s in digits.SITES)
    per_site = {e["dataset"]: e["metrics"] for e in evals}
    total = sum(m["num_examples"] for m in per_site.values())
    weighted = sum(m["sparse_categorical_accuracy"] * m["num_examples"] for m in per_site.values()) / total
    assert weighted == pytest.approx(version["metrics"]["eval"]["sparse_categorical_accuracy"], abs=1e-4)


def test_backend_workers_are_stopped_after_the_session(fedavg_session):
    _, _, backend = fedavg_session
    assert backend.worker_pids == []
    assert worker_children() == []


def test_dp_fixed_session_records_epsilon_from_dp_accounting(digits_registry):
    from tffprod.privacy.accounting import epsilon_for

    registry, root = digits_registry
    dp = {"mechanism": "gaussian_fixed", "noise_multiplier": 0.5, "clip": 1.0, "delta": 1e-5}
    result = train(_spec("digits-dp", rounds=3, dp=dp), registry=registry, backend=LocalBackend())
    rounds = registry.list_rounds(result["id"])
    expected = [epsilon_for(noise_multiplier=0.5, rounds=n, delta=1e-5) for n in (1, 2, 3)]
    assert [r["epsilon"] for r in rounds] == pytest.approx(expected, rel=1e-9)
    assert expected[0] < expected[1] < expected[2] and math.isfinite(expected[2])
    version = result["model_version"]
    assert version["epsilon"] == pytest.approx(expected[-1]) and version["delta"] == 1e-5
    assert version["dp"]["mechanism"] == "gaussian_fixed"
    assert version["datasets"] == [f"{s}/train:1" for s in digits.SITES]


def test_adaptive_clipping_on_csv_fraud_data(tmp_path):
    from tffprod.data.register import register_dataset

    paths = fraud.prepare(tmp_path / "data", n_per_bank=400)
    with Registry.open(tmp_path / "tffprod.db") as registry:
        for bank in paths:
            for split in ("train", "test"):
                register_dataset(registry, f"{bank}/{split}", paths[bank][split], schema=fraud.SCHEMA)
        dp = {"mechanism": "gaussian_adaptive", "noise_multiplier": 0.2, "clip": 0.5, "delta": 1e-5}
        spec = _spec("fraud-dp", rounds=2, dp=dp, task="tffprod.examples.fraud:task", sites=tuple(paths))
        result = train(spec, registry=registry, backend=LocalBackend())
        assert result["status"] == "finished" and result["rounds_completed"] == 2
        version = result["model_version"]
        assert version["epsilon"] > 0
        assert 0.0 <= version["metrics"]["eval"]["binary_accuracy"] <= 1.0
        rows = registry.list_rounds(result["id"])
        examples = {p["site"]: p["examples"] for p in rows[0]["participants"]}
        assert examples == {b: registry.get_dataset(f"{b}/train")["num_examples"] for b in paths}
        # The same through a plan, on the sites' release path (simulated): the moving clip is the
        # coordinator's to send, the adaptive constants are the plan's.
        from tffprod.sessions.approval import make_plan, write_plan
        from tffprod.sessions.runner import train_from_plan
        from tffprod.protocol.terms import ReleaseTerms
        from tffprod.sessions.planning import plan_session

        document = make_plan(plan_session(spec, registry=registry))
        (train_entry,) = [c for c in document["computations"] if c["role"] == "train"]
        pinned = {e["path"]: e["value"] for e in train_entry["state"]["pinned"]}
        estimator = "aggregator/query_state/numerator_state/quantile_estimator_state"
        assert pinned[f"{estimator}/target_quantile"] == 0.5 and f"{estimator}/current_estimate" not in pinned
        plan_path = write_plan(document, tmp_path / "adaptive.plan.json")
        planned = train_from_plan(plan_path, registry=registry, backend=LocalBackend(log_dir=tmp_path / "sim"))
        assert planned["status"] == "finished" and planned["rounds_completed"] == 2
        import base64

        terms = ReleaseTerms(train_entry, base64.b64decode(train_entry["proto"]))
        index = [leaf.path for leaf in terms.signature.state].index(f"{estimator}/current_estimate")
        last = registry.list_rounds(planned["id"])[-1]
        estimate = float(np.load(last["checkpoint"])[f"leaf{index}"])
        assert estimate != pytest.approx(0.5)  # the clip adapted, and the sites trained with it


def test_custom_process_builder_hook(digits_registry, tmp_path):
    registry, _ = digits_registry
    task_file = tmp_path / "prox_task.py"
    task_file.write_text(
        "import dataclasses\n"
        "import tensorflow_federated as tff\n"
        "from tffprod.examples import digits\n"
        "CALLS = []\n"
        "def build(task, model_fn, aggregator):\n"
        "    CALLS.append(aggregator)\n"
        "    return tff.learning.algorithms.build_weighted_fed_prox(\n"
        "        model_fn, proximal_strength=0.1,\n"
        "        client_optimizer_fn=task.client_optimizer.build(),\n"
        "        server_optimizer_fn=task.server_optimizer.build())\n"
        "task = dataclasses.replace(digits.task, name='digits-prox', process_builder=build)\n"
    )
    result = train(_spec("digits-prox", rounds=2, task=f"{task_file}:task"), registry=registry,
                   backend=LocalBackend())
    import sys

    module = next(m for name, m in sys.modules.items() if name.endswith("prox_task"))
    assert module.CALLS == [None]  # called once, with no DP aggregator
    assert result["status"] == "finished"
    assert result["task"]["custom_process"] is True


def test_same_seed_gives_same_weights(digits_registry):
    from tffprod.models.export import load_weights

    registry, _ = digits_registry
    a = train(_spec("digits-seed", rounds=2), registry=registry, backend=LocalBackend())
    b = train(_spec("digits-seed", rounds=2), registry=registry, backend=LocalBackend())
    wa = load_weights(a["model_version"]["artifact_path"]).trainable
    wb = load_weights(b["model_version"]["artifact_path"]).trainable
    assert a["model_version"]["version"] + 1 == b["model_version"]["version"]
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_dp_spec_with_a_process_that_drops_the_dp_aggregator_fails(digits_registry, tmp_path):
    from tffprod.errors import SessionError

    registry, _ = digits_registry
    task_file = tmp_path / "no_dp_task.py"
    task_file.write_text(
        "import dataclasses\n"
        "import tensorflow_federated as tff\n"
        "from tffprod.examples import digits\n"
        "def build(task, model_fn, aggregator):  # ignores the DP aggregator it is given\n"
        "    return tff.learning.algorithms.build_weighted_fed_avg(\n"
        "        model_fn, client_optimizer_fn=task.client_optimizer.build(),\n"
        "        server_optimizer_fn=task.server_optimizer.build())\n"
        "task = dataclasses.replace(digits.task, process_builder=build)\n"
    )
    dp = {"mechanism": "gaussian_fixed", "noise_multiplier": 0.5, "clip": 1.0, "delta": 1e-5}
    with pytest.raises(SessionError, match="reports no DP event"):
        train(_spec("digits-nodp", rounds=2, dp=dp, task=f"{task_file}:task"), registry=registry,
              backend=LocalBackend())
    (failed,) = [s for s in registry.list_sessions(status="failed") if s["name"] == "digits-nodp"]
    assert "no DP event" in failed["error"]
    assert failed["rounds_completed"] == 0
    assert [v for v in registry.list_model_versions("digits-nodp")] == []


def _kill_site_after_round(backend: LocalBackend, site: str, after: int):
    def progress(report):
        if report.round_num == after:
            backend._workers[f"site-{site}"].stop()  # the site goes away between rounds

    return progress


def test_a_dead_site_is_recorded_and_the_round_goes_on_without_it(digits_registry):
    registry, _ = digits_registry
    backend = LocalBackend()
    spec = _spec("digits-churn", rounds=3, min_sites=2)
    result = train(spec, registry=registry, backend=backend, progress=_kill_site_after_round(backend, "hospital-c", 1))
    assert result["status"] == "finished" and result["rounds_completed"] == 3
    rounds = registry.list_rounds(result["id"])
    status = [{p["site"]: p["status"] for p in r["participants"]} for r in rounds]
    assert status[0] == dict.fromkeys(digits.SITES, "ok")
    for later in status[1:]:
        assert later == {"hospital-a": "ok", "hospital-b": "ok", "hospital-c": "error"}
    failed = next(p for p in rounds[1]["participants"] if p["site"] == "hospital-c")
    assert "unavailable" in failed["error"] and failed["attempts"] == 3 and failed["examples"] == 0
    trained_on = rounds[1]["metrics"]["client_work"]["train"]["num_examples"]
    assert trained_on == sum(registry.get_dataset(f"{s}/train")["num_examples"] for s in ("hospital-a", "hospital-b"))
    # The dead site's test set is reported as not evaluated; the model version is kept.
    version = result["model_version"]
    assert list(version["metrics"]["eval_errors"]) == ["hospital-c/test:1"]
    evaluated = {e["dataset"] for e in registry.list_evaluations(version["name"], version["version"])}
    assert evaluated == {"hospital-a/test:1", "hospital-b/test:1"}


def test_too_few_sites_fail_the_session_with_the_reason(digits_registry):
    from tffprod.errors import SessionError

    registry, _ = digits_registry
    backend = LocalBackend()
    spec = _spec("digits-quorum", rounds=3, min_sites=3)
    with pytest.raises(SessionError, match="round needs 3 site"):
        train(spec, registry=registry, backend=backend, progress=_kill_site_after_round(backend, "hospital-a", 1))
    (failed,) = [s for s in registry.list_sessions(status="failed") if s["name"] == "digits-quorum"]
    assert failed["rounds_completed"] == 1
    assert "hospital-a: error" in failed["error"]


def test_a_budget_for_3_rounds_stops_a_10_round_session_with_a_usable_model(digits_registry, tmp_path):
    import tensorflow as tf

    from tffprod.privacy.accounting import epsilon_for
    from tffprod.errors import PrivacyBudgetError
    from tffprod.models.export import export_artifact

    registry, _ = digits_registry
    z, delta = 0.5, 1e-5
    already = registry.privacy_report(site="hospital-b", name="train")  # earlier DP tests in this module
    spent_before = already[0]["spent"]["epsilon"] if already else 0.0
    budget = spent_before + (epsilon_for(noise_multiplier=z, rounds=3, delta=delta)
                             + epsilon_for(noise_multiplier=z, rounds=4, delta=delta)) / 2
    registry.set_budget("hospital-b", "train", epsilon=budget, delta=1e-3, source="site")
    dp = {"mechanism": "gaussian_fixed", "noise_multiplier": z, "clip": 1.0, "delta": delta}
    with pytest.raises(PrivacyBudgetError, match="3 round"):
        train(_spec("digits-budget", rounds=10, dp=dp), registry=registry, backend=LocalBackend())
    assert [s for s in registry.list_sessions() if s["name"] == "digits-budget"] == []

    result = train(_spec("digits-budget", rounds=10, dp={**dp, "on_budget": "stop"}), registry=registry,
                   backend=LocalBackend())
    assert (result["status"], result["rounds_completed"], result["rounds_planned"]) == ("finished", 3, 10)
    version = result["model_version"]
    assert "stopped after round 3 of 10" in version["metrics"]["stopped"]
    assert version["epsilon"] == pytest.approx(epsilon_for(noise_multiplier=z, rounds=3, delta=delta))
    (report,) = registry.privacy_report(site="hospital-b", name="train")
    assert report["spent"]["epsilon"] == pytest.approx(spent_before + version["epsilon"])
    assert report["spent"]["epsilon"] <= budget
    assert report["remaining"]["epsilon"] == pytest.approx(budget - report["spent"]["epsilon"])
    saved = export_artifact(version["artifact_path"], tmp_path / "budget-model")
    predictions = tf.saved_model.load(str(saved)).signatures["serving_default"](
        pixels=tf.zeros([2, 64]))["predictions"].numpy()
    assert predictions.shape == (2, 10) and np.allclose(predictions.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(PrivacyBudgetError, match="0 round"):
        train(_spec("digits-budget", rounds=1, dp={**dp, "on_budget": "stop"}), registry=registry,
              backend=LocalBackend())
    registry.set_budget("hospital-b", "train", epsilon=1e9, delta=0.5, source="site")  # leave others unbudgeted
