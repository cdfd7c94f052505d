"""Checkpoint files: exact round trips, damaged or foreign files refused, stale files removed (moved from
unit/test_resume.py: ``tffprod.training.checkpoint`` imports TensorFlow)."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from tffprod.errors import CheckpointError

pytestmark = pytest.mark.integration


State = collections.namedtuple("State", ["weights", "event", "is_init", "step"])


def _state(scale: float) -> State:
    return State(weights=[np.full((3, 2), scale, np.float32), np.arange(4, dtype=np.int64)],
                 event={"module": b"dp_accounting", "z": np.float32(scale)}, is_init=False, step=np.int32(7))


def test_a_checkpoint_round_trips_exactly(tmp_path: Path) -> None:
    from tffprod.training.checkpoint import load_checkpoint, save_checkpoint

    path, digest = save_checkpoint(_state(1.5), tmp_path / "ckpt", 3)
    assert path.name == "round-00003.npz" and not list((tmp_path / "ckpt").glob("*.tmp"))
    loaded = load_checkpoint(path, digest, _state(0.0))
    assert isinstance(loaded, State)
    assert np.array_equal(loaded.weights[0], _state(1.5).weights[0]) and loaded.weights[0].dtype == np.float32
    assert loaded.event["module"] == b"dp_accounting" and loaded.event["module"].decode() == "dp_accounting"
    assert loaded.event["z"] == np.float32(1.5) and not loaded.is_init and loaded.is_init is not None
    assert int(loaded.step) == 7


def test_a_damaged_or_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    from tffprod.training.checkpoint import load_checkpoint, save_checkpoint

    path, digest = save_checkpoint(_state(1.0), tmp_path, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(path, digest, _state(0.0))
    path.write_bytes(data)
    other = State(weights=[np.zeros((2, 2), np.float32), np.arange(4)], event=_state(0).event, is_init=False,
                  step=np.int32(0))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(path, digest, other)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "missing.npz", digest, _state(0.0))


def test_stale_checkpoints_and_half_written_files_are_removed(tmp_path: Path) -> None:
    from tffprod.training.checkpoint import remove_stale, save_checkpoint

    paths = [save_checkpoint(_state(float(n)), tmp_path, n)[0] for n in (1, 2, 3)]
    (tmp_path / "round-00004.npz.tmp").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("kept")
    remove_stale(tmp_path, set(paths[1:]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "round-00002.npz", "round-00003.npz"]
