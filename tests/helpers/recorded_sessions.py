"""A finished session recorded through the registry API, as the round loop and finish record one (TF-free).

Three rounds at two hospitals (hospital-b times out in round 2), training metrics as TFF's FedAvg
reports them, epsilon per round with DP, and a model version with its per-dataset and overall
evaluations and a full lineage.
"""

from __future__ import annotations

from pathlib import Path

from tffprod.models.lineage import build_lineage
from tffprod.registry import Registry

TASK = "tffprod.examples.digits:task"
SITES = ("hospital-a", "hospital-b")
TRAIN = [f"{s}/train:1" for s in SITES]
EVAL = [f"{s}/test:1" for s in SITES]
DP = {"mechanism": "gaussian_fixed", "noise_multiplier": 0.8, "clip": 1.0, "delta": 1e-5}
LOSS = [0.9123, 0.7456, 0.5234]
ACCURACY = [0.5012, 0.6345, 0.7589]
EPSILON = [1.1234, 1.6345, 2.0456]
SITE_TIME = {"hospital-a": [0.41, 0.52, 0.38], "hospital-b": [0.73, 2.5, 0.66]}
EVALUATION = {"hospital-a/test:1": {"loss": 0.4812, "sparse_categorical_accuracy": 0.8123, "num_examples": 60},
              "hospital-b/test:1": {"loss": 0.5521, "sparse_categorical_accuracy": 0.7642, "num_examples": 40}}
OVERALL = {"loss": 0.5096, "sparse_categorical_accuracy": 0.7931, "num_examples": 100}


def participants(round_num: int) -> list[dict]:
    out = []
    for site in SITES:
        failed = site == "hospital-b" and round_num == 2
        out.append({"site": site, "status": "timeout" if failed else "ok",
                    "duration_s": SITE_TIME[site][round_num - 1], "clients": 0 if failed else 1,
                    "examples": 0 if failed else 100, "error": "deadline exceeded" if failed else None,
                    "attempts": 1})
    return out


def record_session(registry: Registry, tmp_path: Path, *, dp: bool = True, rounds: int = 3,
                   finish: bool = True, name: str = "flu") -> dict:
    """Datasets, a session with ``rounds`` committed rounds and (``finish``) its model version.

    Returns ``{"session": row, "rounds": [rows], "version": row or None}``.
    """
    for ref in TRAIN + EVAL:
        site, dataset = ref.split(":")[0].split("/")
        if not [d for d in registry.list_datasets(site) if d["name"] == dataset]:
            registry.add_dataset(site=site, name=dataset, path=f"/data/{site}/{dataset}.csv", format="csv",
                                 schema={"features": []}, num_examples=100, content_hash=f"sha256:{site}-{dataset}")
    spec = {"name": name, "task": TASK, "datasets": [r.split(":")[0] for r in TRAIN],
            "eval_datasets": [r.split(":")[0] for r in EVAL], "rounds": 3, "min_sites": 1,
            "dp": DP if dp else {"mechanism": "none"}}
    privacy = {"unit": "site dataset (site-level)" if dp else "none (no DP)", "clients": 2,
               "sampling": {"mode": "all"}}
    session = registry.create_session(name=name, spec=spec, task={"name": "digits"}, backend="local",
                                      rounds_planned=3, datasets=TRAIN, privacy=privacy)
    registry.start_session(session["id"], coordinator={"host": "elsewhere", "pid": 1})
    checkpoints = tmp_path / "artifacts" / name / session["id"] / "checkpoints"
    rows = []
    for n in range(1, rounds + 1):
        metrics = {"client_work": {"train": {"loss": LOSS[n - 1], "sparse_categorical_accuracy": ACCURACY[n - 1],
                                             "num_examples": 200 - 100 * (n == 2), "num_batches": 8}},
                   "finalizer": {"update_non_finite": 0}}
        parts = participants(n)
        rows.append(registry.record_round(
            session["id"], round_num=n, metrics=metrics, participants=parts,
            duration_s=max(p["duration_s"] for p in parts) + 0.05, epsilon=EPSILON[n - 1] if dp else None,
            sampling_rate=None, clients=sum(p["clients"] for p in parts),
            checkpoint=str(checkpoints / f"round-{n:05d}.npz"), checkpoint_sha256="0" * 64))
    version = None
    if finish:
        dp_table = {**DP, "privacy": {"unit": privacy["unit"], "epsilon": {"rdp": EPSILON[rounds - 1], "pld": None},
                                      "against_coordinator": {"noise_placement": "coordinator",
                                                              "secure_aggregation": False,
                                                              "epsilon": EPSILON[rounds - 1]}}} \
            if dp else {"mechanism": "none"}
        epsilon, delta = (EPSILON[rounds - 1], DP["delta"]) if dp else (None, None)
        evaluation = {"overall": OVERALL, "datasets": EVALUATION}
        lineage = build_lineage(registry, session_id=session["id"], datasets=TRAIN, eval_datasets=EVAL, dp=dp_table,
                                epsilon=epsilon, delta=delta, task_path=TASK,
                                train_metrics=rows[-1]["metrics"]["client_work"]["train"], evaluation=evaluation)
        evaluations = [{"dataset": ref, "metrics": m} for ref, m in EVALUATION.items()]
        evaluations.append({"dataset": ",".join(EVALUATION), "metrics": OVERALL, "kind": "overall"})
        version = registry.add_model_version(
            name=name, session_id=session["id"], artifact_path=str(checkpoints.parent),
            metrics={"train": rows[-1]["metrics"]["client_work"]["train"], "eval": OVERALL}, dp=dp_table,
            epsilon=epsilon, delta=delta, datasets=TRAIN, task={"name": "digits"}, lineage=lineage,
            evaluations=evaluations, finishes_session=True)
    return {"session": registry.get_session(session["id"]), "rounds": rows, "version": version}
