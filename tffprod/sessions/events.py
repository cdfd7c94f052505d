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
        import tensorflow as tf

        if run not in self._writers:
            self._writers[run] = tf.summary.create_file_writer(str(self.logdir / run))
        writer = self._writers[run]
        with writer.as_default(step=step):
            for tag, value in scalars.items():
                tf.summary.scalar(tag, value)
        writer.flush()

    @staticmethod
    def _steps(run_dir: Path) -> set[int]:
        """The rounds a run directory's event files hold (a file cut short by a crash: what it holds whole)."""
        import tensorflow as tf

        steps: set[int] = set()
        for path in sorted(run_dir.glob("events.out.tfevents.*")) if run_dir.is_dir() else []:
            try:
                for event in tf.compat.v1.train.summary_iterator(str(path)):
                    if any(value.tag == _ROUND_TAG for value in event.summary.value):
                        steps.add(int(event.step))
            except tf.errors.DataLossError:
                continue
        return steps
