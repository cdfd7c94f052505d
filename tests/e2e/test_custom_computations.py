"""Custom federated computations (``tffprod.sessions.analytics.run_federated``) end to end.

Real TFF, real workers; results are checked against the data files read
independently (``tffprod.data.files`` / numpy), and through a real federation
(site processes, mTLS, gateways) against the local backend.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tffprod.backends import create_backend
from tffprod.backends.local import LocalBackend
from tffprod.sessions.analytics import run_federated
from tffprod.data.files import iter_examples
from tffprod.data.register import register_dataset
from tffprod.errors import DatasetError, NotFoundError, SpecError
from tffprod.examples import digits, fraud, stats
from tffprod.executors.audit import read_audit_log
from tffprod.registry import Registry

from .conftest import read_file_computation, running_federation, worker_children

pytestmark = pytest.mark.e2e

TASK = "tffprod.examples.digits:task"
SPLITS = ("train", "test")
DIGITS_REFS = [f"{site}/{split}" for site in digits.SITES for split in SPLITS]
FRAUD_REFS = [f"{bank}/train" for bank in fraud.FRAUD_RATES]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom")
    return root, digits.prepare(root / "digits"), fraud.prepare(root / "fraud")


@pytest.fixture(scope="module")
def registry(data):
    root, digit_paths, fraud_paths = data
    with Registry.open(root / "local.db") as reg:
        for site in digits.SITES:
            for split in SPLITS:
                register_dataset(reg, f"{site}/{split}", digit_paths[site][split], schema=digits.SCHEMA)
        for bank in fraud.FRAUD_RATES:
            register_dataset(reg, f"{bank}/train", fraud_paths[bank]["train"], schema=fraud.SCHEMA)
        yield reg


@pytest.fixture(scope="module")
def local_histogram(registry, data):
    root = data[0]
    histogram = stats.label_histogram(digits.SCHEMA, "tfrecord", digits.NUM_CLASSES)
    return run_federated(histogram, DIGITS_REFS, registry=registry, backend=LocalBackend(log_dir=root / "logs"),
                         timeout_s=300.0)


def _no_new_workers(before):
    assert {p.pid for p in worker_children()} <= before


def test_label_histogram_equals_a_count_from_the_files(local_histogram, data):
    _, digit_paths, _ = data
    counts = Counter(example["digit"] for site in digits.SITES for split in SPLITS
                     for example in iter_examples(digit_paths[site][split], "tfrecord", digits.SCHEMA))
    assert local_histogram.value == [counts[c] for c in range(digits.NUM_CLASSES)]
    assert [(s["site"], s["status"], s["clients"]) for s in local_histogram.sites] == [
        (site, "ok", 2) for site in digits.SITES]
    assert all(s["error"] is None and s["examples"] > 0 for s in local_histogram.sites)


def test_feature_mean_of_csv_data_equals_numpy(registry, data):
    root, _, fraud_paths = data
    amounts = np.concatenate([np.genfromtxt(fraud_paths[bank]["train"], delimiter=",", names=True)["amount"]
                              for bank in fraud.FRAUD_RATES])
    mean = stats.feature_mean(fraud.SCHEMA, "csv", "amount")
    result = run_federated(mean, FRAUD_REFS, registry=registry, backend=LocalBackend(log_dir=root / "logs"),
                           timeout_s=300.0)
    assert isinstance(result.value, float)
    assert result.value == pytest.approx(float(amounts.mean()), rel=1e-6)
    assert [s["status"] for s in result.sites] == ["ok"] * len(FRAUD_REFS)


def test_a_server_argument_is_broadcast_to_the_clients(registry, data):
    """A ``(value@SERVER, references@CLIENTS)`` parameter: how many amounts exceed a threshold."""
    import tensorflow as tf
    import tensorflow_federated as tff

    from tffprod.data.tfdata import read_examples

    root, _, fraud_paths = data

    @tff.tensorflow.computation(np.str_, np.float32)
    def count_above(ref, threshold):
        examples = read_examples(ref, fraud.SCHEMA, "csv")
        return examples.reduce(tf.constant(0, tf.int64),
                               lambda n, row: n + tf.cast(row["amount"] > threshold, tf.int64))

    @tff.federated_computation(tff.FederatedType(np.float32, tff.SERVER), tff.FederatedType(np.str_, tff.CLIENTS))
    def above(threshold, refs):
        return tff.federated_sum(tff.federated_map(count_above, (refs, tff.federated_broadcast(threshold))))

    amounts = np.concatenate([np.genfromtxt(fraud_paths[bank]["train"], delimiter=",", names=True)["amount"]
                              for bank in fraud.FRAUD_RATES]).astype(np.float32)
    threshold = np.float32(np.median(amounts))
    with pytest.raises(SpecError, match="pass server_arg"):
        run_federated(above, FRAUD_REFS, registry=registry, backend=LocalBackend())
    result = run_federated(above, FRAUD_REFS, registry=registry, backend=LocalBackend(log_dir=root / "logs"),
                           server_arg=threshold, timeout_s=300.0)
    assert result.value == int((amounts > threshold).sum())


def test_a_computation_that_releases_client_values_is_refused_before_anything_runs(registry):
    import tensorflow_federated as tff

    leak = read_file_computation()

    @tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
    def no_refs(values):
        return tff.federated_sum(values)

    before = {p.pid for p in worker_children()}
    backend = LocalBackend()
    with pytest.raises(SpecError, match="would release per-client values"):
        run_federated(leak, DIGITS_REFS, registry=registry, backend=backend)
    with pytest.raises(SpecError, match="one dataset reference per client"):
        run_federated(no_refs, DIGITS_REFS, registry=registry, backend=backend)
    with pytest.raises(SpecError, match="tff.Computation"):
        run_federated(lambda refs: refs, DIGITS_REFS, registry=registry, backend=backend)
    assert backend.worker_pids == []
    _no_new_workers(before)


def test_unknown_or_changed_datasets_are_refused_before_anything_runs(registry, data, tmp_path):
    root, digit_paths, _ = data
    histogram = stats.label_histogram(digits.SCHEMA, "tfrecord", digits.NUM_CLASSES)
    before = {p.pid for p in worker_children()}
    backend = LocalBackend()
    with pytest.raises(NotFoundError, match="hospital-z/train"):
        run_federated(histogram, ["hospital-a/train", "hospital-z/train"], registry=registry, backend=backend)

    copy = tmp_path / "copy.tfrecord"
    copy.write_bytes(digit_paths["hospital-a"]["train"].read_bytes())
    register_dataset(registry, "hospital-a/copy", copy, schema=digits.SCHEMA)
    copy.write_bytes(digit_paths["hospital-b"]["train"].read_bytes())
    with pytest.raises(DatasetError, match="changed since it was registered"):
        run_federated(histogram, ["hospital-a/copy"], registry=registry, backend=backend)
    assert backend.worker_pids == []
    _no_new_workers(before)


@pytest.fixture(scope="module")
def federation(data):
    root, digit_paths, _ = data
    datasets = {site: {split: {"path": digit_paths[site][split], "task": TASK} for split in SPLITS}
                for site in digits.SITES}
    with running_federation(root, datasets) as (fed, registry):
        yield fed, registry


def test_histogram_through_the_gateways_equals_local_and_is_audited(federation, local_histogram):
    fed, remote_registry = federation
    audit_logs = {site: fed.workdir / "sites" / site / "state" / "audit.jsonl" for site in digits.SITES}
    seen = {site: len(list(read_audit_log(path))) for site, path in audit_logs.items()}

    histogram = stats.label_histogram(digits.SCHEMA, "tfrecord", digits.NUM_CLASSES)
    result = run_federated(histogram, DIGITS_REFS, registry=remote_registry,
                           backend=create_backend("remote", registry=remote_registry), timeout_s=300.0)

    assert result.value == local_histogram.value
    assert [(s["site"], s["status"], s["clients"]) for s in result.sites] == [
        (site, "ok", 2) for site in digits.SITES]
    for site, path in audit_logs.items():
        calls = list(read_audit_log(path))[seen[site]:]
        methods = {c["method"].rsplit("/", 1)[-1] for c in calls}
        assert {"CreateValue", "Compute"} <= methods, (site, methods)
        assert all(c["identity"] == "coordinator" and c["status"] == "OK" for c in calls), (site, calls)


def test_custom_computations_run_at_approving_sites_only_as_plans_they_approved(data, local_histogram, tmp_path):
    """Sites that require approval release a custom computation's per-site part only under a plan they
    approved (its server argument pinned by the plan); the results equal the local ones."""
    import tensorflow as tf
    import tensorflow_federated as tff
    from click.testing import CliRunner

    from tffprod.cli.main import cli
    from tffprod.errors import SessionError
    from tffprod.sessions.analytics import make_computation_plan
    from tffprod.sessions.approval import write_plan
    from tffprod.data.tfdata import read_examples

    root, digit_paths, _ = data
    datasets = {site: {split: {"path": digit_paths[site][split], "task": TASK} for split in SPLITS}
                for site in digits.SITES}

    @tff.tensorflow.computation(np.str_, np.int64)
    def count_label(ref, label):
        examples = read_examples(ref, digits.SCHEMA, "tfrecord")
        return examples.reduce(tf.constant(0, tf.int64),
                               lambda n, row: n + tf.cast(tf.equal(row["digit"], label), tf.int64))

    @tff.federated_computation(tff.FederatedType(np.int64, tff.SERVER), tff.FederatedType(np.str_, tff.CLIENTS))
    def how_many(label, refs):
        return tff.federated_sum(tff.federated_map(count_label, (refs, tff.federated_broadcast(label))))

    histogram = stats.label_histogram(digits.SCHEMA, "tfrecord", digits.NUM_CLASSES)
    with running_federation(tmp_path, datasets, computations="approved") as (fed, registry):
        backend = lambda: create_backend("remote", registry=registry)  # noqa: E731
        with pytest.raises(SessionError, match="runs only plans it approved"):
            run_federated(histogram, DIGITS_REFS, registry=registry, backend=backend())
        plans = {}
        for name, comp, arg in (("histogram", histogram, None), ("threes", how_many, np.int64(3))):
            plans[name] = write_plan(make_computation_plan(comp, DIGITS_REFS, registry=registry, server_arg=arg),
                                     tmp_path / f"{name}.plan.json")
            for site in digits.SITES:
                approved = CliRunner().invoke(cli, ["site", "approve", str(plans[name]), "--config",
                                                    str(fed.site_config_path(site))])
                assert approved.exit_code == 0, approved.output
        result = run_federated(histogram, DIGITS_REFS, registry=registry, backend=backend(), plan=plans["histogram"])
        assert result.value == local_histogram.value
        threes = run_federated(how_many, DIGITS_REFS, registry=registry, backend=backend(), server_arg=np.int64(3),
                               plan=plans["threes"])
        assert threes.value == local_histogram.value[3]
        with pytest.raises(SessionError, match="not a computation plan|computes on other datasets"):
            run_federated(histogram, DIGITS_REFS[:2], registry=registry, backend=backend(), plan=plans["histogram"])
        for site in digits.SITES:
            calls = list(read_audit_log(fed.workdir / "sites" / site / "state" / "audit.jsonl"))
            releases = [c["release"] for c in calls if "release" in c]
            assert [(r["role"], sorted(r["datasets"])) for r in releases] == [("compute", ["test", "train"])] * 2
