"""A registry model version with a full lineage, built through the registry API (TF-free)."""

from __future__ import annotations

from pathlib import Path

from tffprod.models.export import SAVED_MODEL_DIR
from tffprod.models.lineage import build_lineage
from tffprod.registry import Registry

TASK = "tffprod.examples.digits:task"
TRAIN = ["hospital-a/train:1", "hospital-b/train:1"]
EVAL = ["hospital-a/test:1"]


def _artifact(tmp_path: Path) -> Path:
    artifact = tmp_path / "artifacts" / "flu" / "s-1"
    (artifact / SAVED_MODEL_DIR / "variables").mkdir(parents=True, exist_ok=True)
    (artifact / SAVED_MODEL_DIR / "saved_model.pb").write_bytes(b"pb")
    (artifact / "model.keras").write_bytes(b"keras")
    return artifact


def add_version(registry: Registry, tmp_path: Path, *, federation: str | None = None, **overrides) -> dict:
    """A session on two sites' datasets and the version it trained, with a full lineage."""
    for ref in TRAIN + EVAL:
        site, name = ref.split(":")[0].split("/")
        registry.add_dataset(site=site, name=name, path=f"/data/{site}/{name}.csv", format="csv",
                             schema={"features": []}, num_examples=100, content_hash=f"sha256:{site}-{name}")
    spec = {"name": "flu", "task": TASK, **({"federation": federation} if federation else {})}
    session = registry.create_session(name="flu", spec=spec, task={"name": "digits"}, backend="local",
                                      rounds_planned=3, datasets=TRAIN)
    dp = {"mechanism": "gaussian_fixed", "noise_multiplier": 0.3, "clip": 1.0, "delta": 1e-5,
          "privacy": {"unit": "site dataset (site-level)"}}
    evaluation = {"overall": {"accuracy": 0.8}, "datasets": {EVAL[0]: {"accuracy": 0.8}}}
    lineage = build_lineage(registry, session_id=session["id"], datasets=TRAIN, eval_datasets=EVAL, dp=dp,
                            epsilon=12.5, delta=1e-5, task_path=TASK, train_metrics={"loss": 0.4},
                            evaluation=evaluation)
    fields = dict(name="flu", session_id=session["id"], artifact_path=str(_artifact(tmp_path)),
                  metrics={"train": {"loss": 0.4}, "eval": evaluation["overall"]}, dp=dp, epsilon=12.5,
                  delta=1e-5, datasets=TRAIN, task={"name": "digits"}, lineage=lineage)
    version = registry.add_model_version(**{**fields, **overrides})
    registry.add_evaluation(model="flu", version=version["version"], dataset=EVAL[0], metrics={"accuracy": 0.8},
                            session_id=session["id"])
    return version
