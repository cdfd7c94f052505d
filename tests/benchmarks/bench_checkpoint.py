"""What a round's checkpoint costs: ``python -m tests.benchmarks.bench_checkpoint``.

A benchmark, not a test: it prints numbers. For server states of several sizes (a model's
float32 weights twice, as FedAvg with a momentum server optimizer keeps them, plus the
small DP and optimizer scalars) it writes the checkpoint as a round does (temporary file,
fsync, rename, directory fsync), verifies its SHA-256 and loads it back, and prints the
median milliseconds of each step and the file size.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

State = collections.namedtuple("State", ["weights", "optimizer", "event", "round"])


def _state(parameters: int) -> State:
    rng = np.random.default_rng(0)
    layer = rng.standard_normal(parameters, dtype=np.float32)
    return State(weights=[layer], optimizer=[layer.copy()],
                 event={"module": b"dp_accounting.dp_event", "noise_multiplier": np.float32(1.0)}, round=np.int32(1))


def main() -> None:
    from tffprod.training.checkpoint import load_checkpoint, save_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"{'parameters':>12} {'file MB':>8} {'save ms':>8} {'load ms':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for parameters in (2_730, 100_000, 1_000_000, 10_000_000):
            state, template = _state(parameters), _state(parameters)
            saves, loads = [], []
            for i in range(args.repeat):
                t0 = time.perf_counter()
                path, digest = save_checkpoint(state, Path(tmp), i + 1)
                saves.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                load_checkpoint(path, digest, template)
                loads.append(time.perf_counter() - t0)
            size = path.stat().st_size / 1e6
            print(f"{parameters:>12,} {size:>8.2f} {statistics.median(saves) * 1e3:>8.1f} "
                  f"{statistics.median(loads) * 1e3:>8.1f}")


if __name__ == "__main__":
    main()
