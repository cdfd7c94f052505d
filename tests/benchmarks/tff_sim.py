"""Rows A and B of ``bench_vs_tff``: TFF 0.87's own simulation of the workload, no tffprod machinery.

``tff.learning.algorithms.build_weighted_fed_avg`` over the task's Keras model, every client in ONE
``worker_binary`` reached through a plain TFF ``SyncExecutionContext`` over a gRPC channel (what TFF's
default local C++ context also does, but started by us so that it is stopped and measured; the same
context the local backend uses). One round is one ``process.next`` call.

``memory`` (A)
    each client's data is a ``tf.data.Dataset`` built in this process from in-memory tensors
    (``from_tensor_slices``), shuffled and batched as tffprod does; TFF serializes it into the call.
``files`` (B)
    each client's data is its TFRecord file's path; a dataset computation opens the file inside the
    client computation (``tff.simulation.compose_dataset_computation_with_learning_process``), as
    tffprod does. Its reader is the plain one a TFF user writes (``TFRecordDataset``, then
    ``parse_single_example`` per record), not tffprod's: so B stays a fixed baseline, and what tffprod's
    own reader gains shows against it.

Run as a program (``python -m tests.benchmarks.tff_sim --mode files --data DIR --sites a,b,c``) it is a
fresh process timing its own start: it prints one JSON line with the wall clock at the end of round 1
and its peak memory, and the worker's.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Optional, Sequence  # noqa: E402

MODES = ("memory", "files", "files-tffprod-reader")
SEED = 0


def peak_rss_mb(pid: Optional[int] = None) -> float:
    """The process's peak resident set (``VmHWM``), in MB; NaN when it is gone."""
    try:
        status = Path(f"/proc/{pid or 'self'}/status").read_text()
    except OSError:
        return float("nan")
    kb = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]  # none once a zombie
    return int(kb[0]) / 1024 if kb else float("nan")


class Simulation:
    """One TFF learning process, its state and its worker; ``rounds(n)`` times ``n`` rounds.

    Args:
        mode: ``memory`` (row A) or ``files`` (row B).
        task: the :class:`tffprod.Task` (model, loss, optimizers, batch size).
        paths: one TFRecord file per client (``files``); ``memory`` reads the same examples from
            ``vs_tff_task.examples`` instead (never from the files).
        log_dir: where the worker's log goes.
    """

    def __init__(self, mode: str, task: Any, paths: Sequence[Path], *, log_dir: Path) -> None:
        import tensorflow_federated as tff

        from tffprod.backends.contexts import channel_context, insecure_channel
        from tffprod.workers.process import WorkerProcess

        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        self.mode, self.task, self.paths = mode, task, [str(p) for p in paths]
        self.worker = WorkerProcess(name=f"tff-{mode}", log_path=Path(log_dir) / f"tff-{mode}.log").start()
        try:
            self.context = channel_context(insecure_channel(self.worker.address))
            self.process = self._build(tff)
            with tff.framework.get_context_stack().install(self.context):
                self.state = self.process.initialize()
        except BaseException:
            self.worker.stop()
            raise

    def _build(self, tff: Any) -> Any:
        from tffprod.data.tfdata import element_spec

        task = self.task

        def model_fn() -> Any:
            return tff.learning.models.from_keras_model(task.model_fn(), loss=task.loss_fn(),
                                                        input_spec=element_spec(task.schema),
                                                        metrics=task.metrics_fn())

        process = tff.learning.algorithms.build_weighted_fed_avg(
            model_fn, client_optimizer_fn=task.client_optimizer.build(),
            server_optimizer_fn=task.server_optimizer.build())
        if self.mode == "memory":
            return process
        if self.mode == "files-tffprod-reader":  # row B': tffprod's own reader (parses 256 records at a time)
            from tffprod.data.tfdata import training_dataset_computation

            reader = training_dataset_computation(task.schema, "tfrecord", batch_size=task.batch_size,
                                                  epochs=task.local_epochs, seed=SEED)
            return tff.simulation.compose_dataset_computation_with_learning_process(reader, process)
        return tff.simulation.compose_dataset_computation_with_learning_process(self._file_reader(tff), process)

    def _file_reader(self, tff: Any) -> Any:
        """A TFF computation from a TFRecord file's path to the client's batched, shuffled dataset."""
        import numpy as np
        import tensorflow as tf

        task = self.task
        columns = {c.name: tf.io.FixedLenFeature(c.shape, tf.as_dtype(c.dtype)) for c in task.schema.columns}

        def example(record: Any) -> Any:
            row = tf.io.parse_single_example(record, columns)
            return {f.name: row[f.name] for f in task.schema.features}, row[task.schema.label.name]

        @tff.tensorflow.computation(np.str_)
        def open_file(path: Any) -> Any:
            ds = tf.data.TFRecordDataset(path).map(example)
            return ds.shuffle(1024, seed=SEED).repeat(task.local_epochs).batch(task.batch_size)

        return open_file

    def client_data(self, clients: int) -> list[Any]:
        """The first ``clients`` clients' data: datasets from memory, or file paths."""
        if self.mode != "memory":
            return self.paths[:clients]
        import tensorflow as tf

        from tests.benchmarks.vs_tff_task import examples

        task, out = self.task, []
        for i in range(clients):
            x, y = examples(i)
            ds = tf.data.Dataset.from_tensor_slices(({"x": x}, y))
            out.append(ds.shuffle(1024, seed=SEED).repeat(task.local_epochs).batch(task.batch_size))
        return out

    def rounds(self, n: int, clients: int, *, on_round: Any = None) -> list[float]:
        """Run ``n`` rounds on the first ``clients`` clients; each round's wall seconds."""
        import tensorflow_federated as tff

        data = self.client_data(clients)
        durations = []
        with tff.framework.get_context_stack().install(self.context):
            for _ in range(n):
                start = time.perf_counter()
                output = self.process.next(self.state, data)
                self.state = output.state
                durations.append(time.perf_counter() - start)
                if on_round is not None:
                    on_round(len(durations))
        return durations

    def close(self) -> None:
        self.worker.stop()


def main(argv: Optional[list[str]] = None) -> int:
    """A fresh process: build, run ``--rounds`` rounds, print the wall clock at the end of round 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--data", type=Path, required=True, help="vs_tff_task.prepare's folder")
    parser.add_argument("--sites", required=True, help="comma-separated site folders, in order")
    parser.add_argument("--task", default="task", help="vs_tff_task's attribute: task or task_1m")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    from tests.benchmarks import vs_tff_task

    sites = args.sites.split(",")
    stamps: dict[str, float] = {}
    sim = Simulation(args.mode, getattr(vs_tff_task, args.task),
                     [args.data / site / "train.tfrecord" for site in sites], log_dir=args.data.parent / "logs")
    try:
        durations = sim.rounds(args.rounds, len(sites),
                               on_round=lambda k: stamps.setdefault("round1_end", time.time()) if k == 1 else None)
        worker_mb = peak_rss_mb(sim.worker.pid)
    finally:
        sim.close()
    print(json.dumps({**stamps, "durations": durations, "python_mb": peak_rss_mb(), "worker_mb": worker_mb}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
