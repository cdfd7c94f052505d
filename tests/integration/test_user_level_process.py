"""The user-level process (one TFF client per site, one clipped SGD step per user) against NumPy and Keras.

One site of the fraud example holds K users' files (one per customer, plus an empty one); the process's
update, new weights and per-site part are checked against each user's step computed directly with Keras.
Runs on this module's own ``worker_binary`` (``worker_context``): TFF's default local context would start a
worker that nothing stops.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tffprod import Optimizer, SpecError
from tffprod.data.clients import split_by_client
from tffprod.examples import fraud

K = 6  # users at the site (the last one's file holds no example)
EXPECTED_USERS = 4.0


def _read_user(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    features = {c.name: np.array([float(r[c.name]) for r in rows], np.float32) for c in fraud.SCHEMA.features}
    return features, np.array([int(r[fraud.SCHEMA.label.name]) for r in rows], np.int64)


def _direct_deltas(weights, users) -> list[list[np.ndarray]]:
    """Each user's unclipped one-step delta: a Keras model at ``weights``, mean loss, ``-lr * grad``."""
    import tensorflow as tf

    model, loss_fn = fraud.task.model_fn(), fraud.task.loss_fn()
    weights.assign_weights_to(model)
    lr = fraud.task.client_optimizer.learning_rate
    deltas = []
    for features, labels in users:
        if len(labels) == 0:
            deltas.append([np.zeros(v.shape, np.float32) for v in model.trainable_variables])
            continue
        with tf.GradientTape() as tape:
            loss = loss_fn(tf.constant(labels), model(features, training=True))
        deltas.append([-lr * g.numpy() for g in tape.gradient(loss, model.trainable_variables)])
    return deltas


def _clipped_sum(deltas: list[list[np.ndarray]], clip: float) -> list[np.ndarray]:
    total = [np.zeros_like(d, dtype=np.float64) for d in deltas[0]]
    for delta in deltas:
        norm = np.sqrt(sum(np.sum(np.square(d, dtype=np.float64)) for d in delta))
        for t, d in zip(total, delta):
            t += d * min(1.0, clip / norm) if norm > 0 else 0.0
    return total


@pytest.fixture(scope="module")
def site(tmp_path_factory, worker_context):
    """K user paths of bank-a, a process whose clip is the median user's delta norm, its initial state."""
    from tffprod.training.user_level import build_user_level_process

    root = tmp_path_factory.mktemp("fraud-users")
    data = fraud.prepare(root / "data", n_per_bank=400, customers_per_bank=40)
    shards = split_by_client(data["bank-a"]["train"], "csv", fraud.CUSTOMER_ID, root / "users")[:K - 1]
    empty = root / "empty.csv"
    empty.write_text(shards[0].read_text().splitlines()[0] + "\n")
    paths = [*shards, empty]
    process0 = build_user_level_process(fraud.task, fmt="csv", clip=1.0, noise_stddev=0.0,
                                        expected_users=EXPECTED_USERS)
    state = worker_context.invoke(process0.initialize, None)
    weights = worker_context.invoke(process0.get_model_weights, state)
    deltas = _direct_deltas(weights, [_read_user(p) for p in paths])
    norms = [np.sqrt(sum(np.sum(np.square(d)) for d in delta)) for delta in deltas]
    clip = float(np.median(norms[:-1]))
    process = build_user_level_process(fraud.task, fmt="csv", clip=clip, noise_stddev=0.0,
                                       expected_users=EXPECTED_USERS)
    return {"process": process, "state": state, "weights": weights, "paths": np.array([str(p) for p in paths]),
            "expected": _clipped_sum(deltas, clip), "norms": norms, "clip": clip}


def test_the_site_sends_the_sum_of_its_users_clipped_steps(site, worker_context) -> None:
    import tensorflow_federated as tff

    assert sum(n > site["clip"] for n in site["norms"]) == 2 and sum(0 < n < site["clip"] for n in site["norms"]) == 2
    form = tff.backends.native.compile_to_mergeable_comp_form(site["process"].next)
    partial = worker_context.invoke(form.up_to_merge, tff.structure.Struct.unnamed(site["state"], [site["paths"]]))
    stats, update = partial[0], partial[1]
    assert [u.shape for u in update] == [w.shape for w in site["weights"].trainable]
    for got, want in zip(update, site["expected"]):  # TFF's sign: initial minus trained weights
        np.testing.assert_allclose(got, -want, rtol=0, atol=1e-5)
    rows = sum(len(_read_user(Path(p))[1]) for p in site["paths"])
    assert (stats["num_examples"], stats["num_users"]) == (rows, K) and stats["loss_sum"] > 0


def test_without_noise_the_server_adds_the_sum_over_the_expected_users(site, worker_context) -> None:
    import tensorflow_federated as tff

    server = fraud.task.server_optimizer
    assert (server.name, server.momentum) == ("sgd", 0.0)
    process = site["process"]
    output = worker_context.invoke(process.next, tff.structure.Struct.unnamed(site["state"], [site["paths"]]))
    new = worker_context.invoke(process.get_model_weights, output.state)
    for got, start, total in zip(new.trainable, site["weights"].trainable, site["expected"]):
        np.testing.assert_allclose(got, start + server.learning_rate * total / EXPECTED_USERS, rtol=0, atol=1e-5)
    metrics = output.metrics["client_work"]
    assert metrics["num_users"] == K and 0.05 < metrics["loss"] < 5


def test_the_process_has_the_usual_state_and_weights_accessors(site, worker_context) -> None:
    import tensorflow_federated as tff

    state = site["state"]
    assert {"global_model_weights", "distributor", "client_work", "aggregator", "finalizer"} <= set(dir(state))
    again = worker_context.invoke(site["process"].set_model_weights,
                                  tff.structure.Struct.unnamed(state, site["weights"]))
    assert all(np.array_equal(a, b) for a, b in zip(again.global_model_weights.trainable, site["weights"].trainable))
    assert "client_data={str[?]}@CLIENTS" in str(site["process"].next.type_signature)


@pytest.mark.parametrize("optimizer", [Optimizer("adam", 0.01), Optimizer("sgd", 0.1, momentum=0.9)])
def test_a_client_optimizer_other_than_plain_sgd_is_refused(optimizer: Optimizer) -> None:
    from tffprod.training.user_level import build_user_level_process

    task = dataclasses.replace(fraud.task, client_optimizer=optimizer)
    with pytest.raises(SpecError, match="plain SGD") as error:
        build_user_level_process(task, fmt="csv", clip=1.0, noise_stddev=0.0, expected_users=10.0)
    assert "\n" not in str(error.value)


def test_the_vectorized_csv_reader_reads_what_the_per_file_reader_reads(tmp_path):
    """Many small files at once (``CSVFormat.tf_columns``) against one ``tf.data`` reader per file: the same
    rows in the same order, through blank lines, CRLF, spaces, a missing final newline, columns in another
    order, extra columns and a file with no rows."""
    import tensorflow as tf

    from tffprod.training.user_level import collect, read_user_examples, read_users

    names = [c.name for c in fraud.SCHEMA.columns]
    files = {
        "plain.csv": ",".join(names) + "\n" + "".join(",".join(str(i + j) for j in range(len(names))[:-1]) + ",1\n"
                                                      for i in range(3)),
        "messy.csv": " " + " , ".join(reversed(names)) + " ,extra\r\n\r\n" + "1, 0.5,2,3,4,5.25,6,x\r\n"
                     + "   \n" + "0,7,8,9,10,11,12,y",
        "empty.csv": ",".join(names) + "\n",
    }
    paths = []
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    vectorized = read_users(tf.constant(paths), fraud.SCHEMA, "csv")
    per_file = collect(read_user_examples(tf.data.Dataset.from_tensor_slices(paths), fraud.SCHEMA, "csv"))
    for got, want in zip(tf.nest.flatten(vectorized), tf.nest.flatten(per_file)):
        assert got.dtype == want.dtype and got.numpy().tolist() == want.numpy().tolist()
    assert vectorized[2].numpy().tolist() == [0, 0, 0, 1, 1]  # each row's file; the empty one has none
    assert vectorized[1].numpy().tolist() == [1, 1, 1, 1, 0]


def test_the_vectorized_csv_reader_fails_on_a_file_without_a_column(tmp_path):
    import tensorflow as tf

    from tffprod.training.user_level import read_users

    (tmp_path / "short.csv").write_text("amount,is_fraud\n1,0\n")
    with pytest.raises(tf.errors.InvalidArgumentError, match="a file has no column 'hour'"):
        read_users(tf.constant([str(tmp_path / "short.csv")]), fraud.SCHEMA, "csv")


def test_a_site_that_sampled_no_user_sends_a_zero_update(site, worker_context) -> None:
    import tensorflow_federated as tff

    form = tff.backends.native.compile_to_mergeable_comp_form(site["process"].next)
    nobody = np.array([], dtype=np.str_)
    stats, update = worker_context.invoke(form.up_to_merge, tff.structure.Struct.unnamed(site["state"], [nobody]))
    assert [u.shape for u in update] == [w.shape for w in site["weights"].trainable]
    assert all(not np.any(u) for u in update)
    assert (stats["num_examples"], stats["num_users"], stats["loss_sum"]) == (0, 0, 0.0)


def test_collect_batches_a_whole_dataset_or_gives_empty_tensors_in_a_graph(tmp_path):
    import tensorflow as tf

    from tffprod.training.user_level import collect

    @tf.function
    def collected(n):
        return collect(tf.data.Dataset.range(n).map(lambda i: {"x": tf.fill([2], i), "y": i * 10}))

    got = collected(tf.constant(3, tf.int64))
    assert got["x"].numpy().tolist() == [[0, 0], [1, 1], [2, 2]] and got["y"].numpy().tolist() == [0, 10, 20]
    empty = collected(tf.constant(0, tf.int64))
    assert empty["x"].shape == (0, 2) and empty["y"].shape == (0,)
