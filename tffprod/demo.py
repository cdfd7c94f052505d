"""The end-to-end demo: three hospitals train a digits classifier with DP-FedAvg.

Prepares the data, registers it, writes the session spec, trains through the
local backend, evaluates per site, exports a SavedModel, and trains a
centralized reference for comparison. Everything it makes stays in the workdir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from tffprod.datasets import register_dataset
from tffprod.spec import DPConfig, SessionSpec, dump_spec

TASK_PATH = "tffprod.examples.digits:task"
SPEC_FILE = "digits-dp.toml"


def demo_spec(rounds: int, sites: tuple[str, ...]) -> SessionSpec:
    """The demo's session: DP-FedAvg (fixed clipping) over the hospitals' training sets."""
    return SessionSpec.from_dict(
        {
            "name": "digits-dp",
            "task": TASK_PATH,
            "datasets": [f"{site}/train" for site in sites],
            "eval_datasets": [f"{site}/test" for site in sites],
            "rounds": rounds,
            "seed": 0,
            "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": 0.1, "clip": 1.0, "delta": 1e-5},
        }
    )


def run_demo(
    workdir: Path,
    *,
    rounds: int = 25,
    registry_factory: Callable[[Path], Any],
    backend: Any,
    progress: Optional[Callable] = None,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the whole demo in ``workdir``; returns a summary (paths, accuracy, epsilon, reference).

    Args:
        registry_factory: opens the registry at a path (``tffprod.registry.Registry.open``).
        backend: an unopened backend for the session.
        progress: per-round callback.
        say: where to report steps, for people watching.
    """
    from tffprod.examples import digits
    from tffprod.export import export_artifact
    from tffprod.session import train

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"preparing digits data for {', '.join(digits.SITES)} in {workdir / 'data'}")
    paths = digits.prepare(workdir / "data")
    registry_path = workdir / "tffprod.db"
    spec = demo_spec(rounds, digits.SITES)
    spec_path = workdir / SPEC_FILE
    dump_spec(spec, spec_path)
    with registry_factory(registry_path) as registry:
        for site in digits.SITES:
            for split in ("train", "test"):
                row = register_dataset(registry, f"{site}/{split}", paths[site][split], schema=digits.SCHEMA)
                say(f"registered {row['ref']} ({row['num_examples']} examples)")
        say(f"training {spec.name}: {rounds} rounds of DP-FedAvg over {len(spec.datasets)} sites")
        result = train(spec, registry=registry, backend=backend, progress=progress)
        version = result["model_version"]
        evaluations = registry.list_evaluations(version["name"], version["version"])
    export_dir = workdir / "export" / f"{version['name']}-v{version['version']}"
    export_artifact(version["artifact_path"], export_dir)
    say("training the centralized reference (pooled data, same passes)")
    reference = _central_reference(workdir / "data", rounds)
    eval_metrics = version["metrics"].get("eval", {})
    return {
        "workdir": str(workdir),
        "registry": str(registry_path),
        "spec": str(spec_path),
        "session_id": result["id"],
        "model": f"{version['name']}:{version['version']}",
        "saved_model": str(export_dir),
        "accuracy": eval_metrics.get("sparse_categorical_accuracy"),
        "per_site_accuracy": {e["dataset"]: e["metrics"].get("sparse_categorical_accuracy") for e in evaluations},
        "epsilon": version["epsilon"],
        "delta": version["delta"],
        "central_accuracy": reference.get("sparse_categorical_accuracy"),
        "repeat_command": f"tffprod session run --spec {spec_path} --registry {registry_path}",
    }


def _central_reference(data_dir: Path, rounds: int) -> dict[str, float]:
    from tffprod.centralized import train_centrally
    from tffprod.examples import digits

    central = data_dir / digits.CENTRAL
    return train_centrally(digits.task, central / "train.tfrecord", central / "test.tfrecord", fmt="tfrecord",
                           epochs=rounds)
