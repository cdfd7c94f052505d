"""TensorBoard event files of a session, so ``tensorboard --logdir`` shows its training.

Each session writes under its artifacts, next to its checkpoints
(``artifacts/<spec name>/<session id>/tensorboard/``), two runs:

- ``train/``: one step per committed round (step = round number), the scalars of
  :func:`tffprod.sessions.round_metrics.round_scalars` (training metrics, epsilon, each site's
  participation and time, the round's duration), written from the round's registry row right
  after it is committed, so the files hold the registry's values;
- ``eval/``: the session's evaluation at the last round's step: ``metrics/NAME`` over all
  held-out data (beside the training curve of the same tag) and ``datasets/REF/NAME`` per dataset.

A resumed session writes to the same directory (a new event file); rounds committed by a
coordinator that died before writing their events are written first (:meth:`SessionEvents.catch_up`).

Event files are for watching: writing them never fails a session. The first error is logged
as a warning and no further events are written by this run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from tffprod.sessions.round_metrics import is_number, round_scalars

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore, RoundRow

log = logging.getLogger(__name__)

__all__ = ["EVAL_RUN", "TENSORBOARD_DIR", "TRAIN_RUN", "SessionEvents", "evaluation_scalars", "tensorboard_dir"]

TENSORBOARD_DIR = "tensorboard"
TRAIN_RUN = "train"
EVAL_RUN = "eval"
_ROUND_TAG = "round/duration_s"  # in every round's step: which rounds an event file already holds


def tensorboard_dir(artifacts_dir: Path, name: str, session_id: str) -> Path:
    """``ARTIFACTS/NAME/SESSION/tensorboard``: a session's logdir, beside its ``checkpoints``."""
    return Path(artifacts_dir) / name / session_id / TENSORBOARD_DIR


def evaluation_scalars(evaluations: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The eval run's scalars by tag from a version's evaluation rows (``Registry.list_evaluations``):
    ``metrics/NAME`` for the one over all held-out data, ``datasets/REF/NAME`` for each dataset."""
    scalars = {}
    for evaluation in evaluations:
        prefix = "metrics" if evaluation.get("kind") == "overall" else f"datasets/{evaluation['dataset']}"
        scalars.update({f"{prefix}/{k}": float(v) for k, v in evaluation["metrics"].items() if is_number(v)})
    return scalars


class SessionEvents:
    """The event files of one run of a session (``session run`` or one ``session resume``).

    Writers are opened on first use; :meth:`close` flushes and closes them. Every method logs
    a warning instead of raising.
    """

    def __init__(self, logdir: Path, session_id: str) -> None:
        self.logdir = Path(logdir)
        self.session_id = session_id
        self.failed = False
        self._writers: dict[str, Any] = {}

    def round(self, row: RoundRow) -> None:
        """Write a committed round's scalars at step ``round_num`` (the row as the registry returned it)."""
        self._guarded(lambda: self._write(TRAIN_RUN, row["round_num"], round_scalars(row)))

    def catch_up(self, completed: Sequence[RoundRow]) -> None:
        """Write the committed rounds the logdir lacks (a coordinator killed between a round's commit and
        its events), before a resumed session's next round."""

        def write() -> None:
            if not completed:
                return
            written = self._steps(self.logdir / TRAIN_RUN)
            for row in completed:
                if row["round_num"] not in written:
                    self._write(TRAIN_RUN, row["round_num"], round_scalars(row))

        self._guarded(write)

    def evaluation(self, registry: RegistryStore, version: Mapping[str, Any], *, step: int) -> None:
        """Write the evaluation this session recorded of the model ``version`` it registered (its registry
        rows) at ``step``, the last round's number."""

        def write() -> None:
            evaluations = registry.list_evaluations(version["name"], version["version"], kind=None)
            mine = [e for e in evaluations if e.get("session_id") == self.session_id]
            if mine:
                self._write(EVAL_RUN, step, evaluation_scalars(mine))

        self._guarded(write)

    def close(self) -> None:
        """Flush and close the writers (safe to call more than once)."""
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            try:
                writer.close()
            except Exception as e:  # event files never fail a session
                self._warn(e)

    def _guarded(self, write: Callable[[], None]) -> None:
        if self.failed:
            return
        try:
            write()
        except Exception as e:  # event files never fail a session
            self._warn(e)

    def _warn(self, error: Exception) -> None:
        if not self.failed:
            log.warning("session %s: TensorBoard event files in %s not written (%s: %s); the session goes on "
                        "without them", self.session_id, self.logdir, type(error).__name__,
                        str(error).splitlines()[0] if str(error) else "")
        self.failed = True

    def _write(self, run: str, step: int, scalars: Mapping[str, float]) -> None:
        if run not in self._writers:
            self._writers[run] = _EventFile(self.logdir / run)
        self._writers[run].scalars(step, scalars)

    @staticmethod
    def _steps(run_dir: Path) -> set[int]:
        """The rounds a run directory's event files hold (a file cut short by a crash: what it holds whole)."""
        steps: set[int] = set()
        for path in sorted(run_dir.glob("events.out.tfevents.*")) if run_dir.is_dir() else []:
            steps.update(event.step for event in _read_events(path)
                         if any(value.tag == _ROUND_TAG for value in event.summary.value))
        return steps


# Event files are TFRecord files of ``tensorboard``'s ``Event`` protos, the first one naming the file
# version. They are written and read here with tffprod's own TFRecord framing and TensorBoard's protos
# alone: no TensorFlow (``tf.summary`` would import it, and a session's coordinator may not have it loaded).


class _EventFile:
    """One run's event file, ``events.out.tfevents.TIME.HOST.PID[.N]``, appended to and flushed per step."""

    def __init__(self, run_dir: Path) -> None:
        import os
        import socket
        import time

        from tensorboard.compat.proto import event_pb2

        run_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self._path = run_dir / name
        for n in range(1, 1000):  # another writer of this process this second: a file of its own
            if not self._path.exists():
                break
            self._path = run_dir / f"{name}.{n}"
        self._stream = open(self._path, "xb")
        self._append(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        import time

        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()]
        self._append(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values)))

    def _append(self, event: Any) -> None:
        from tffprod.data.formats.tfrecord import write_record

        write_record(self._stream, event.SerializeToString())
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


def _read_events(path: Path) -> list[Any]:
    """The events a file holds whole (a record cut short by a crash, and what follows it, left out)."""
    from tensorboard.compat.proto import event_pb2

    from tffprod.data.formats.tfrecord import read_records
    from tffprod.errors import DatasetError

    events = []
    with open(path, "rb") as stream:
        try:
            for data in read_records(path, stream):
                events.append(event_pb2.Event.FromString(data))
        except (DatasetError, ValueError):  # DecodeError is a ValueError
            pass
    return events
