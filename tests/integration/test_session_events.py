"""A session's TensorBoard event files, written from registry rows and read back with
``tf.compat.v1.train.summary_iterator`` (the whole session: tests/e2e/test_export_and_cli.py)."""

from __future__ import annotations

import logging

import pytest

from tffprod.registry import Registry
from tffprod.sessions.events import SessionEvents, tensorboard_dir

from ..helpers.recorded_sessions import record_session
from ..helpers.tensorboard import assert_events_equal_registry, read_scalars

pytestmark = pytest.mark.integration


@pytest.fixture
def recorded(tmp_path):
    with Registry.open(tmp_path / "tffprod.db") as registry:
        yield registry, record_session(registry, tmp_path)


def test_rounds_and_evaluation_read_back_equal_the_registry(recorded, tmp_path):
    registry, session = recorded
    sid = session["session"]["id"]
    logdir = tensorboard_dir(tmp_path / "artifacts", "flu", sid)
    events = SessionEvents(logdir, sid)
    for row in session["rounds"]:
        events.round(row)
    events.evaluation(registry, session["version"], step=3)
    events.close()
    assert logdir.parent == tmp_path / "artifacts" / "flu" / sid and not events.failed
    evaluations = registry.list_evaluations("flu", 1, kind=None)
    assert len(evaluations) == 3
    assert_events_equal_registry(logdir, session["rounds"], evaluations)
    round_2 = read_scalars(logdir / "train")[2]
    assert round_2["sites/hospital-b/ok"] == [0.0] and round_2["sites/hospital-a/ok"] == [1.0]
    assert round_2["round/sites_ok"] == [1.0] and round_2["round/clients"] == [1.0]


def test_a_resumed_session_writes_the_rounds_its_logdir_lacks_once(recorded, tmp_path):
    """The coordinator died after committing round 3, before its events: resuming writes round 3 only."""
    _, session = recorded
    sid = session["session"]["id"]
    logdir = tensorboard_dir(tmp_path / "artifacts", "flu", sid)
    first = SessionEvents(logdir, sid)
    for row in session["rounds"][:2]:
        first.round(row)
    first.close()
    resumed = SessionEvents(logdir, sid)
    resumed.catch_up(session["rounds"])
    resumed.close()
    assert len(list((logdir / "train").iterdir())) == 2  # one event file per run of the session
    assert_events_equal_registry(logdir, session["rounds"], None)


def test_event_files_that_cannot_be_written_log_one_warning_and_never_raise(recorded, tmp_path, caplog):
    _, session = recorded
    sid = session["session"]["id"]
    (tmp_path / "taken").write_text("a file where the logdir would be")
    events = SessionEvents(tmp_path / "taken" / "tensorboard", sid)
    with caplog.at_level(logging.WARNING, logger="tffprod"):
        for row in session["rounds"]:
            events.round(row)
        events.catch_up(session["rounds"])
        events.close()
    assert events.failed
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"session {sid}: TensorBoard event files in {tmp_path / 'taken' / 'tensorboard'} not written" \
        in warning.getMessage()
