"""Server-state checkpoints: one file per committed round.

A checkpoint is the learning process's server state after a round, flattened
to its arrays and written as an ``.npz`` file. It is written to a temporary
name, flushed to disk and renamed into place, and only then is the round's
registry row (which names the file and its SHA-256) committed. A file with no
committed row, a ``.tmp`` left by a crash, or a file whose hash does not match
its row is never loaded: resume names the problem instead.

Nothing here imports TensorFlow at module level.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

from tffprod.errors import CheckpointError

_FORMAT = "tffprod-checkpoint/1"


def checkpoint_path(directory: Path, round_num: int) -> Path:
    return Path(directory) / f"round-{round_num:05d}.npz"


def _signature(leaves: list[Any]) -> list[str]:
    return [f"{leaf.dtype.str}{list(leaf.shape)}" for leaf in leaves]


def _flatten(state: Any) -> list[Any]:
    import numpy as np
    import tensorflow as tf

    return [np.asarray(leaf) for leaf in tf.nest.flatten(state)]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: Any, directory: Path, round_num: int) -> tuple[Path, str]:
    """Write ``state`` durably as round ``round_num``'s checkpoint; returns ``(path, sha256)``."""
    import numpy as np

    from tffprod.training.faults import crash_point

    leaves = _flatten(state)
    buffer = io.BytesIO()
    np.savez(buffer, format=np.array(_FORMAT), signature=np.array(_signature(leaves)),
             **{f"leaf{i}": leaf for i, leaf in enumerate(leaves)})
    data = buffer.getvalue()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, round_num)
    tmp = path.with_suffix(".npz.tmp")
    with open(tmp, "wb") as f:
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        crash_point("checkpoint-partial", round_num)
        f.write(data[half:])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_directory(directory)
    return path, hashlib.sha256(data).hexdigest()


def verify_checkpoint(path: str | Path, sha256: str) -> bytes:
    """The checkpoint's bytes, if they are the ones the registry committed.

    Raises:
        CheckpointError: the file is missing or unreadable, or its hash is not ``sha256``
            (truncated or edited).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise CheckpointError(f"checkpoint {path} is damaged: sha256 {actual[:16]}..., the registry committed "
                              f"{sha256[:16]}... ({len(data)} bytes; truncated or edited)")
    return data


def load_checkpoint(path: str | Path, sha256: str, template: Any) -> Any:
    """The state saved at ``path``, packed into ``template``'s structure.

    Raises:
        CheckpointError: the file is missing, its hash is not ``sha256`` (truncated or
            edited), or its arrays do not fit ``template``.
    """
    import numpy as np
    import tensorflow as tf

    data = verify_checkpoint(path, sha256)
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        if str(archive["format"]) != _FORMAT:
            raise CheckpointError(f"checkpoint {path}: unknown format {archive['format']}")
        signature = [str(s) for s in archive["signature"]]
        leaves = [archive[f"leaf{i}"] for i in range(len(signature))]
    expected = _signature(_flatten(template))
    if signature != expected:
        raise CheckpointError(f"checkpoint {path} does not fit this session's training process "
                              f"({len(signature)} arrays saved, {len(expected)} expected, or their shapes differ)")
    # Scalars go back as scalars (bytes, bool, float), as TFF returned them, not as 0-d arrays.
    kinds = tf.nest.flatten(template)
    leaves = [leaf if isinstance(kind, np.ndarray) or leaf.ndim else leaf[()] for kind, leaf in zip(kinds, leaves)]
    return tf.nest.pack_sequence_as(template, leaves)


def remove_stale(directory: Path, keep: set[Path]) -> None:
    """Delete checkpoint files in ``directory`` other than ``keep`` (leftovers and old rounds)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if path.name.startswith("round-") and path not in keep:
            try:
                path.unlink()
            except OSError:
                pass
