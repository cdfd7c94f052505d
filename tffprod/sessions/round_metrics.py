"""A committed round's numbers, as people watch them: ``session show``, TensorBoard and ``session report``.

A round row (:class:`tffprod.registry.protocol.RoundRow`) holds TFF's nested measurements as
recorded; :func:`train_metrics` picks the training metrics out of them, and
:func:`round_scalars` flattens a whole row into named scalars, the tags of the TensorBoard
event files (:mod:`tffprod.sessions.events`):

- ``metrics/NAME``: each training metric (loss, accuracy, num_examples, ...);
- ``privacy/epsilon`` and ``privacy/epsilon_pld``: privacy spent so far (DP sessions only);
- ``round/duration_s``, ``round/sites_ok``, ``round/sites``, ``round/clients``;
- ``sites/SITE/ok`` (1 or 0), ``sites/SITE/duration_s``, ``sites/SITE/clients``: each site called.

TF-free: plain dicts in, plain floats out.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["is_number", "round_scalars", "shown_metrics", "train_metrics"]


def train_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A round's training metrics (loss, accuracy, ...) from TFF's nested measurements: FedAvg's
    ``client_work.train``, the one-step process's ``client_work``, or a process without client work's
    measurements whole; ``{}`` for a round nobody took part in. Given training metrics, returns them."""
    if "client_work" not in metrics:
        return dict(metrics)
    work = metrics["client_work"] or {}
    train = work.get("train")
    return dict(train if isinstance(train, dict) else work)


def is_number(value: Any) -> bool:
    """An int or float (not a bool, not a nested structure)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def shown_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics people read (loss, accuracy, AUC, ...): floats, counts (``num_*``) left out."""
    return {k: v for k, v in metrics.items() if isinstance(v, float) and not k.startswith("num_")}


def round_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """Every scalar of one committed round, by TensorBoard tag (see the module docstring)."""
    scalars = {f"metrics/{k}": float(v) for k, v in train_metrics(row["metrics"]).items() if is_number(v)}
    if row.get("epsilon") is not None:
        scalars["privacy/epsilon"] = float(row["epsilon"])
    if row.get("epsilon_pld") is not None:
        scalars["privacy/epsilon_pld"] = float(row["epsilon_pld"])
    participants = row["participants"]
    scalars["round/duration_s"] = float(row["duration_s"])
    scalars["round/sites_ok"] = float(sum(p["status"] == "ok" for p in participants))
    scalars["round/sites"] = float(len(participants))
    if row.get("clients") is not None:
        scalars["round/clients"] = float(row["clients"])
    for p in participants:
        scalars[f"sites/{p['site']}/ok"] = 1.0 if p["status"] == "ok" else 0.0
        scalars[f"sites/{p['site']}/duration_s"] = float(p["duration_s"])
        if is_number(p.get("clients")):
            scalars[f"sites/{p['site']}/clients"] = float(p["clients"])
    return scalars
