"""User-level DP with one TFF client per site: every sampled user is a microbatch of one gradient step.

Imports TensorFlow and TFF. The algorithm, for one round:

1. The coordinator broadcasts the global weights ``w`` to the sites; each site is ONE TFF client holding
   the paths of its sampled users' files (one file per user, ``str[?]@CLIENTS``).
2. At each site, in one TensorFlow computation, for every sampled user ``k`` with ``n_k > 0`` examples:
   ``g_k`` = the mean over the user's examples of the loss gradient at ``w``; ``delta_k = -lr * g_k``
   (``lr``: the task's plain-SGD client learning rate); ``delta_k`` clipped to L2 norm ``clip`` over all
   trainable weights together. Per-example gradients are vectorized (``tf.vectorized_map``), per-user
   means come from ``tf.math.unsorted_segment_sum``. The site sends MINUS the sum of its users' clipped
   deltas: TFF's sign for client updates (FedAvg's too, "initial minus trained weights"), which its
   server optimizer finalizer subtracts from ``w``.
3. The coordinator sums the sites' updates, adds Gaussian noise of standard deviation ``noise_stddev``
   (0 when the sites add their shares of the noise themselves), divides by the FIXED ``expected_users``
   and applies the task's server optimizer: with SGD at rate ``s``, ``w + s * sum_k clipped(delta_k) /
   expected_users`` (plus noise).

DP meaning: a user's files sit at one site and the user contributes exactly one clipped delta, so adding
or removing a user changes the sum of all sites' updates by at most ``clip`` in L2. The noisy sum is a
Gaussian mechanism with noise multiplier ``z = noise_stddev / clip``; with users sampled at rate ``q``
each round is ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``. Dividing by the fixed ``expected_users``
(not by the actual count) keeps the denominator data-independent. The aggregator's query never clips
again (its clip is ``UNCLIPPED``), so the DP event it records in its state (``z`` about 0) must NOT be
used for accounting: account with ``noise_stddev / clip``. Layers that depend on the batch (batch
normalization) see one example at a time here.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp

from tffprod.data.formats import get_format
from tffprod.data.schema import Schema
from tffprod.data.tfdata import read_examples, to_model_input
from tffprod.errors import SpecError
from tffprod.task import Task
from tffprod.training.process import tff_model_fn

UNCLIPPED = 1e30  # the aggregator query's clip: a site's update is already a sum of clipped user deltas
_ALL = 2**62  # batch size that collects a whole dataset into one batch

USER_PATHS_TYPE = tff.TensorType(np.str_, [None])


def build_user_level_process(task: Task, *, fmt: str, clip: float, noise_stddev: float,
                             expected_users: float) -> tff.learning.templates.LearningProcess:
    """The user-level DP learning process; ``next(state, client_data)`` with ``client_data`` of type
    ``str[?]@CLIENTS``: each client (a site) holds the file paths of its sampled users.

    Raises:
        SpecError: the task's client optimizer is not plain SGD, or ``clip``, ``noise_stddev`` or
            ``expected_users`` is out of range.
    """
    lr = _sgd_learning_rate(task)
    if not clip > 0 or not noise_stddev >= 0 or not expected_users > 0:
        raise SpecError(f"user-level DP needs clip > 0, noise_stddev >= 0 and expected_users > 0, got "
                        f"clip={clip!r}, noise_stddev={noise_stddev!r}, expected_users={expected_users!r}")
    model_fn = tff_model_fn(task)

    @tff.tensorflow.computation
    def initial_model_weights_fn():
        return tff.learning.models.ModelWeights.from_model(model_fn())

    weights_type = initial_model_weights_fn.type_signature.result
    client_work = _build_client_work(task, fmt, weights_type, learning_rate=lr, clip=clip)
    aggregator = tff.aggregators.as_weighted_aggregator(user_sum_factory(noise_stddev, expected_users)).create(
        weights_type.trainable, tff.TensorType(np.float32))
    process = tff.learning.templates.compose_learning_process(
        initial_model_weights_fn,
        tff.learning.templates.build_broadcast_process(weights_type),
        client_work,
        aggregator,
        tff.learning.templates.build_apply_optimizer_finalizer(task.server_optimizer.build(), weights_type),
    )

    @tff.tensorflow.computation(USER_PATHS_TYPE)
    def user_paths(paths):
        return tf.data.Dataset.from_tensor_slices(paths)

    return tff.simulation.compose_dataset_computation_with_learning_process(user_paths, process)


def user_sum_factory(noise_stddev: float, expected_users: float) -> tff.aggregators.DifferentiallyPrivateFactory:
    """Sums the sites' updates without clipping again, adds N(0, noise_stddev^2), divides by ``expected_users``."""
    query = tfp.GaussianSumQuery(l2_norm_clip=UNCLIPPED, stddev=float(noise_stddev))
    return tff.aggregators.DifferentiallyPrivateFactory(tfp.NormalizedQuery(query, denominator=float(expected_users)))


def _sgd_learning_rate(task: Task) -> float:
    optimizer = task.client_optimizer
    if optimizer.name != "sgd" or optimizer.momentum:
        raise SpecError(f"user-level DP takes one plain SGD step per user: task {task.name!r} has client optimizer "
                        f"{optimizer.name!r} (momentum {optimizer.momentum!r}); use Optimizer('sgd', lr)")
    return float(optimizer.learning_rate)


def read_users(paths: tf.Tensor, schema: Schema, fmt: str) -> tuple[Any, tf.Tensor, tf.Tensor]:
    """Every example of the users' files ``paths`` (a string vector) as one batch: ``(features, labels, k)``,
    ``k`` each example's user (position in ``paths``). Uses the format's vectorized reader where it has one
    (CSV: about 100x faster for many small files than one dataset per file), else :func:`read_user_examples`."""
    read = get_format(fmt).tf_columns(paths, schema)
    if read is None:
        return collect(read_user_examples(tf.data.Dataset.from_tensor_slices(paths), schema, fmt))
    columns, users = read
    features, labels = to_model_input(schema)(columns)
    return features, labels, users


def read_user_examples(paths: tf.data.Dataset, schema: Schema, fmt: str) -> tf.data.Dataset:
    """One element per example of every user's file: ``(features, label, k)``, ``k`` the path's position."""

    def user_examples(k, path):
        return read_examples(path, schema, fmt).map(to_model_input(schema)).map(lambda x, y: (x, y, k))

    return paths.enumerate().flat_map(user_examples)


def collect(dataset: tf.data.Dataset) -> Any:
    """All of ``dataset``'s elements as one batch (empty tensors when it has none).

    One ``batch`` and ``get_single_element``: no dataset function to instantiate on every call (a
    ``reduce`` here cost a site about 8 ms per round, most of a user-level round's fixed cost)."""
    batched = dataset.batch(_ALL)
    empty = tf.nest.map_structure(lambda s: tf.zeros([0, *s.shape[1:]], s.dtype), batched.element_spec)
    return batched.concatenate(tf.data.Dataset.from_tensors(empty)).take(1).get_single_element()


def per_example_gradients(model: tf.keras.Model, loss_fn: Callable, features: Any, labels: tf.Tensor
                          ) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """Each example's loss ``[N]`` and its gradients (``[N, *shape]`` per trainable weight), vectorized."""
    weights = model.trainable_variables

    def one(example):
        x, y = example
        with tf.GradientTape() as tape:
            loss = loss_fn(y[None], model(tf.nest.map_structure(lambda t: t[None], x), training=True))
        return loss, tape.gradient(loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return tf.vectorized_map(one, (features, labels))


def clipped_user_sum(losses: tf.Tensor, grads: Sequence[tf.Tensor], users: tf.Tensor, num_users: tf.Tensor, *,
                     learning_rate: float, clip: float) -> list[tf.Tensor]:
    """Sum over users ``k`` of ``-learning_rate * mean_k(grads)``, each clipped to L2 norm ``clip``."""
    counts = tf.math.unsorted_segment_sum(tf.ones_like(losses), users, num_users)
    denominator = tf.maximum(counts, 1.0)  # a user without examples has a zero delta
    deltas = []
    for g in grads:
        per_user = tf.math.unsorted_segment_sum(g, users, num_users)
        deltas.append(-learning_rate * per_user / tf.reshape(denominator, [-1] + [1] * (g.shape.rank - 1)))
    norms = tf.sqrt(tf.add_n([tf.reduce_sum(tf.reshape(tf.square(d), [num_users, -1]), 1) for d in deltas]))
    scale = clip / tf.maximum(norms, clip)
    return [tf.tensordot(scale, d, axes=1) for d in deltas]


def _build_client_work(task: Task, fmt: str, weights_type: Any, *, learning_rate: float,
                       clip: float) -> tff.learning.templates.ClientWorkProcess:
    """Client work over a site's user paths: minus the sum of its users' clipped deltas, loss statistics."""
    paths_type = tff.SequenceType(np.str_)

    @tff.tensorflow.computation(weights_type, paths_type)
    def site_update(weights, paths):
        model, loss_fn = task.model_fn(), task.loss_fn()

        @tf.function  # automatic control dependencies: the weights are assigned before the model reads them
        def compute(weights, paths):
            tf.nest.map_structure(lambda v, t: v.assign(t), tff.learning.models.ModelWeights(
                model.trainable_weights, model.non_trainable_weights), weights)
            paths = collect(paths)
            features, labels, users = read_users(paths, task.schema, fmt)
            num_users = tf.size(paths, out_type=tf.int64)
            losses, grads = per_example_gradients(model, loss_fn, features, labels)
            deltas = clipped_user_sum(losses, grads, users, num_users, learning_rate=learning_rate, clip=clip)
            update = [-d for d in deltas]  # TFF's sign (FedAvg's too): initial minus trained weights
            stats = collections.OrderedDict(loss_sum=tf.reduce_sum(losses),
                                            num_examples=tf.size(labels, out_type=tf.int64), num_users=num_users)
            return update, stats

        update, stats = compute(tff.learning.models.ModelWeights(*weights), paths)
        return tff.learning.templates.ClientResult(update=update, update_weight=tf.constant(1.0)), stats

    @tff.tensorflow.computation(site_update.type_signature.result[1])
    def round_metrics(stats):
        mean = tf.math.divide_no_nan(stats["loss_sum"], tf.cast(stats["num_examples"], tf.float32))
        return collections.OrderedDict(loss=mean, num_examples=stats["num_examples"], num_users=stats["num_users"])

    @tff.federated_computation
    def init_fn():
        return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result, tff.FederatedType(weights_type, tff.CLIENTS),
                               tff.FederatedType(paths_type, tff.CLIENTS))
    def next_fn(state, weights, paths):
        output = tff.federated_map(site_update, (weights, paths))
        measurements = tff.federated_map(round_metrics, tff.federated_sum(output[1]))
        return tff.templates.MeasuredProcessOutput(state, output[0], measurements)

    return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)

