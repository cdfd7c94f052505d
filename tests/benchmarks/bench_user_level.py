"""One site, 100 sampled users: ``python -m tests.benchmarks.bench_user_level``.

A benchmark, not a test: it prints numbers. The fraud example (``prepare(n_per_bank=3000,
customers_per_bank=600)``), bank-a's training file split into one file per customer; the first 100 users'
files are one site's sample. Median seconds per round after a warm-up call, of:

``floor``
    one ``tf.function`` computing the 100 users' clipped deltas' sum from tensors already in memory (the
    client work's own math, :mod:`tffprod.training.user_level`; no TFF, no file reading);
``reading the files only``
    the client work's reading of the 100 files into one batch (``read_users``), in a ``tf.function``;
``floor from the files``
    one ``tf.function`` that reads the 100 users' files and computes their clipped deltas' sum: the floor
    for a site whose data is at rest in files, as tffprod's sites' are;
``user-level, up_to_merge``
    the per-site part of the new process (``compile_to_mergeable_comp_form(process.next).up_to_merge``),
    ONE client holding the 100 paths, through a TFF execution context (which sends the computation with
    every call);
``user-level, at the site``
    the same computation as a site runs a release of it (:class:`tffprod.executors.site_executors.SiteExecutors`
    on the worker: the computation created once on a kept executor, then per call only the argument, the
    call, the result and their disposal); ``, 1 user``: with one user's file (the fixed cost). These calls
    alternate with calls of the floor from the files (``floor from the files, beside it``), and the ratio
    the issue sets (at most 3x) is printed from those two rows;
``user-level, next``
    the whole ``process.next`` of the new process (the same client);
``user-level, next, 1 user``
    the same with one user's file: about the fixed cost of a TFF round (the marginal cost of 99 users is
    the difference);
``today, next``
    ``build_training_process(task, DPConfig(gaussian_fixed, z=1, clip=1))`` with 100 clients, one path
    each (FedAvg with a DP aggregator), one ``process.next``.

Every TFF call runs on one local ``worker_binary`` this process starts and stops (a ``channel_context``, as
the local backend's sites do; TFF's own default context would leave its worker running).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

USERS = 100
CLIP, NOISE_STDDEV = 1.0, 1.0


def interleaved_medians(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median wall time of each of ``fns`` over ``reps`` rounds that call each once in turn, after a warm-up
    call of each: a ratio of two of them is not skewed by the machine's load changing between rows."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def median_seconds(fn: Callable[[], Any], reps: int) -> float:
    """Median wall time of ``fn()`` over ``reps`` calls, after one warm-up call."""
    return interleaved_medians({"fn": fn}, reps)["fn"]


def user_paths(root: Path) -> list[str]:
    """The first ``USERS`` customers' files of bank-a's training data."""
    from tffprod.data.clients import split_by_client
    from tffprod.examples import fraud

    data = fraud.prepare(root / "data", n_per_bank=3000, customers_per_bank=600)
    shards = split_by_client(data["bank-a"]["train"], "csv", fraud.CUSTOMER_ID, root / "users")
    return [str(p) for p in shards[:USERS]]


def read_only(paths: list[str]) -> Callable[[], Any]:
    """Reading the users' files into one batch, as the client work does, in a ``tf.function``."""
    import tensorflow as tf

    from tffprod.examples import fraud
    from tffprod.training.user_level import read_users

    @tf.function
    def read():
        return read_users(tf.constant(paths), fraud.task.schema, "csv")

    return lambda: read()[1].numpy()


def floor_from_files(paths: list[str]) -> Callable[[], Any]:
    """Reading the users' files and computing their clipped deltas' sum, in one ``tf.function``."""
    import tensorflow as tf

    from tffprod.examples import fraud
    from tffprod.training.user_level import clipped_user_sum, per_example_gradients, read_users

    task = fraud.task
    model, loss_fn = task.model_fn(), task.loss_fn()

    @tf.function
    def clipped_sum():
        features, labels, users = read_users(tf.constant(paths), task.schema, "csv")
        losses, grads = per_example_gradients(model, loss_fn, features, labels)
        return clipped_user_sum(losses, grads, users, tf.constant(len(paths), tf.int64),
                                learning_rate=task.client_optimizer.learning_rate, clip=CLIP)

    return lambda: [t.numpy() for t in clipped_sum()]


def floor_round(paths: list[str]) -> tuple[Callable[[], Any], int]:
    """The client work's math alone on in-memory tensors; also the number of examples."""
    import tensorflow as tf

    from tffprod.examples import fraud
    from tffprod.training.user_level import clipped_user_sum, per_example_gradients, read_users

    task = fraud.task
    features, labels, users = read_users(tf.constant(paths), task.schema, "csv")
    model, loss_fn = task.model_fn(), task.loss_fn()
    num_users = tf.constant(len(paths), tf.int64)

    @tf.function
    def clipped_sum():
        losses, grads = per_example_gradients(model, loss_fn, features, labels)
        return clipped_user_sum(losses, grads, users, num_users, learning_rate=task.client_optimizer.learning_rate,
                                clip=CLIP)

    return lambda: [t.numpy() for t in clipped_sum()], int(labels.shape[0])


def at_the_site(worker_address: str, computation: Any, state: Any, paths: list[str], floor: Callable[[], Any],
                reps: int) -> dict[str, float]:
    """Median s/call of ``computation`` run as a site runs a release (``SiteExecutors`` on the worker), with 100
    users and with 1, each call interleaved with one of ``floor`` (the floor from the files), which is timed
    again here so that the ratio the issue sets (at most 3x) compares calls made under the same load."""
    import numpy as np
    import tensorflow_federated as tff
    from tensorflow_federated.python.core.impl.executors import value_serialization

    from tffprod.backends.contexts import insecure_channel
    from tffprod.executors.site_executors import SiteExecutors

    proto = tff.framework.serialize_computation(tff.backends.native.desugar_and_transform_to_native(computation))
    channel = insecure_channel(worker_address)

    def call_worker(method: str, request: Any, response_type: Any, context: Any) -> Any:
        rpc = channel.unary_unary(f"/tensorflow_federated.v0.ExecutorGroup/{method}",
                                  request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=response_type.FromString)
        return rpc(request)

    site = SiteExecutors(call_worker)

    def release(users: list[str]) -> Callable[[], Any]:
        argument, _ = value_serialization.serialize_value(
            tff.structure.Struct.unnamed(state, [np.array(users)]), computation.type_signature.parameter)
        return lambda: site.run("bench", proto, argument, 1, None)

    out = interleaved_medians({"user-level, at the site": release(paths),
                               "floor from the files, beside it": floor,
                               "user-level, at the site, 1 user": release(paths[:1])}, reps * 3)
    channel.close()
    return out


def tff_rounds(ctx: Any, worker_address: str, paths: list[str], floor: Callable[[], Any],
               reps: int) -> dict[str, float]:
    """Median s/round of the new process (per-site part, whole round) and of today's one-client-per-user."""
    import numpy as np
    import tensorflow_federated as tff

    from tffprod.examples import fraud
    from tffprod.privacy.config import DPConfig
    from tffprod.training.process import build_training_process
    from tffprod.training.user_level import build_user_level_process

    Struct = tff.structure.Struct
    new = build_user_level_process(fraud.task, fmt="csv", clip=CLIP, noise_stddev=NOISE_STDDEV,
                                   expected_users=float(USERS))
    form = tff.backends.native.compile_to_mergeable_comp_form(new.next)
    state = ctx.invoke(new.initialize, None)
    site_data = [np.array(paths)]
    out = {
        "user-level, up_to_merge": median_seconds(
            lambda: ctx.invoke(form.up_to_merge, Struct.unnamed(state, site_data)), reps),
        **at_the_site(worker_address, form.up_to_merge, state, paths, floor, reps),
        "user-level, next": median_seconds(lambda: ctx.invoke(new.next, Struct.unnamed(state, site_data)), reps),
        "user-level, next, 1 user": median_seconds(
            lambda: ctx.invoke(new.next, Struct.unnamed(state, [np.array(paths[:1])])), reps),
    }
    dp = DPConfig(mechanism="gaussian_fixed", noise_multiplier=1.0, clip=CLIP, delta=1e-5)
    today = build_training_process(fraud.task, dp, fmt="csv", seed=0, clients_per_round=USERS)
    today_state = ctx.invoke(today.initialize, None)
    out["today, next (100 clients)"] = median_seconds(
        lambda: ctx.invoke(today.next, Struct.unnamed(today_state, paths)), max(2, reps // 2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6, help="timed calls per row after the warm-up (default 6)")
    args = parser.parse_args()

    from tffprod.backends.contexts import channel_context, insecure_channel
    from tffprod.workers.process import WorkerProcess

    with tempfile.TemporaryDirectory(prefix="bench-user-level-") as tmp:
        root = Path(tmp)
        paths = user_paths(root)
        floor, examples = floor_round(paths)
        from_files = floor_from_files(paths)
        rows = {"floor (tf.function, in memory)": median_seconds(floor, args.reps * 3),
                "reading the files only (tf.function)": median_seconds(read_only(paths), args.reps * 3),
                "floor from the files (tf.function)": median_seconds(from_files, args.reps * 3)}
        with WorkerProcess(name="bench", log_path=root / "worker.log") as worker:
            rows.update(tff_rounds(channel_context(insecure_channel(worker.address)), worker.address, paths,
                                   from_files, args.reps))

    print(f"\none site, {len(paths)} users, {examples} examples (fraud bank-a), clip {CLIP}; "
          f"median of {args.reps} after a warm-up (today: {max(2, args.reps // 2)})")
    print(f"{'':38s} {'s/round':>9s} {'x floor':>9s} {'x floor from files':>19s}")
    base, from_files = rows["floor (tf.function, in memory)"], rows["floor from the files (tf.function)"]
    for name, seconds in rows.items():
        print(f"{name:38s} {seconds:9.4f} {seconds / base:9.1f} {seconds / from_files:19.2f}")
    ratio = rows["user-level, at the site"] / rows["floor from the files, beside it"]
    print(f"at the site / floor from the files, timed in turn: {ratio:.2f} (issue 13: at most 3)")
    marginal = rows["user-level, next"] - rows["user-level, next, 1 user"]
    print(f"marginal cost of {len(paths) - 1} more users in a TFF round: {marginal:.4f} s "
          f"({marginal / base:.1f}x the in-memory floor)")


if __name__ == "__main__":
    main()
