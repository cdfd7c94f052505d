"""Read a session's TensorBoard event files back and compare them with the registry (imports TensorFlow
when called: for tests/integration and tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_scalars(run_dir: Path) -> dict[int, dict[str, list[float]]]:
    """``{step: {tag: [value, ...]}}`` of every event file in ``run_dir``, read with
    ``tf.compat.v1.train.summary_iterator`` (a tag written twice at a step shows as two values)."""
    import tensorflow as tf

    steps: dict[int, dict[str, list[float]]] = {}
    files = sorted(Path(run_dir).glob("events.out.tfevents.*"))
    assert files, f"no event files in {run_dir}"
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = tf.make_ndarray(value.tensor).item() if value.HasField("tensor") else value.simple_value
                steps.setdefault(int(event.step), {}).setdefault(value.tag, []).append(float(number))
    return steps


def close32(a: float, b: float) -> bool:
    """Equal as the float32 an event file stores."""
    return bool(np.float32(a) == np.float32(b)) or abs(a - b) <= 1e-6 * max(1.0, abs(b))


def expected_round(row: dict) -> dict[str, float]:
    """The scalars a committed round's events must hold, read off its registry row by hand (not through
    ``tffprod.sessions.round_metrics``): the training metrics, epsilon, each site's participation and time."""
    work = row["metrics"].get("client_work") or {}
    train = work.get("train", work)
    expected = {f"metrics/{k}": v for k, v in train.items() if isinstance(v, (int, float))}
    if row["epsilon"] is not None:
        expected["privacy/epsilon"] = row["epsilon"]
    if row["epsilon_pld"] is not None:
        expected["privacy/epsilon_pld"] = row["epsilon_pld"]
    expected["round/duration_s"] = row["duration_s"]
    for p in row["participants"]:
        expected[f"sites/{p['site']}/ok"] = 1.0 if p["status"] == "ok" else 0.0
        expected[f"sites/{p['site']}/duration_s"] = p["duration_s"]
    return expected


def assert_events_equal_registry(logdir: Path, rounds: list[dict], evaluations: list[dict] | None) -> None:
    """Every committed round once at its step with the registry's values, and (given) the evaluation at
    the last round's step: ``metrics/NAME`` over all held-out data, ``datasets/REF/NAME`` per dataset."""
    train = read_scalars(Path(logdir) / "train")
    assert sorted(train) == [r["round_num"] for r in rounds]
    for row in rounds:
        got = train[row["round_num"]]
        assert all(len(values) == 1 for values in got.values()), f"round {row['round_num']} written twice"
        for tag, value in expected_round(row).items():
            assert tag in got, f"round {row['round_num']}: no {tag} in {sorted(got)}"
            assert close32(got[tag][0], value), (row["round_num"], tag, got[tag][0], value)
    if evaluations is None:
        assert not (Path(logdir) / "eval").exists()
        return
    (step, got), = read_scalars(Path(logdir) / "eval").items()
    assert step == rounds[-1]["round_num"]
    for evaluation in evaluations:
        prefix = "metrics" if evaluation["kind"] == "overall" else f"datasets/{evaluation['dataset']}"
        for name, value in evaluation["metrics"].items():
            assert close32(got[f"{prefix}/{name}"][0], value), (prefix, name)
    assert len(got) == sum(len(e["metrics"]) for e in evaluations)
