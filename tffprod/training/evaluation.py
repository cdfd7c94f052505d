"""Federated evaluation: each dataset is evaluated at its own site.

Imports TensorFlow and TFF.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import tensorflow_federated as tff

from tffprod.backends.base import Backend
from tffprod.errors import SessionError
from tffprod.training.metrics import plain_metrics
from tffprod.training.process import build_evaluation_process
from tffprod.training.router import RoundRouter
from tffprod.task import Task

Struct = tff.structure.Struct


def _eval_metrics(output: Any) -> dict[str, float]:
    metrics = plain_metrics(output.metrics)
    current = metrics.get("client_work", {}).get("eval", {}).get("current_round_metrics")
    return current if current is not None else metrics


def evaluate(
    task: Task,
    weights: Any,
    datasets: Sequence[Mapping[str, Any]],
    *,
    backend: Backend,
    fmt: str,
    timeout_s: float = 600.0,
    site_computation: Any = None,
) -> dict[str, Any]:
    """Evaluate ``weights`` on each dataset at its site, and over all of them.

    Args:
        task: the task whose model and metrics to use.
        weights: ``tff.learning.models.ModelWeights`` to evaluate.
        datasets: registry rows of the datasets, all in format ``fmt``.
        backend: an open backend with every dataset's site.
        site_computation: an approved plan's frozen evaluation computation to run at the
            sites instead of a fresh compile (its type must match).

    Returns:
        ``{"overall": metrics, "datasets": {ref: metrics}, "errors": {ref: reason}}``: a dataset
        whose site fails is reported in ``errors`` and left out of ``overall``.

    Raises:
        SessionError: no dataset could be evaluated.
    """
    process = build_evaluation_process(task, fmt=fmt)
    form = tff.backends.native.compile_to_mergeable_comp_form(process.next)
    ctx = backend.coordinator_context()
    state = ctx.invoke(process.initialize, None)
    state = ctx.invoke(process.set_model_weights, Struct.unnamed(state, weights))
    if site_computation is not None:
        from tffprod.training.trainer import check_signature

        check_signature("eval", site_computation, form.up_to_merge, "of this session")
    router = RoundRouter(backend, form, timeout_s=timeout_s, site_computation=site_computation)
    per_dataset, partials, errors = {}, [], {}
    for row in datasets:
        (outcome,) = router.partials(state, {row["site"]: [backend.reference(row)]})
        if outcome.status != "ok":
            errors[row["ref"]] = f"site {row['site']}: {outcome.status}: {outcome.error}"
            continue
        partials.append(outcome.partial)
        per_dataset[row["ref"]] = _eval_metrics(router.finish(state, outcome.partial))
    if not partials:
        raise SessionError(f"evaluation failed on every dataset: {'; '.join(errors.values())}")
    overall = _eval_metrics(router.finish(state, router.merge(partials)))
    return {"overall": overall, "datasets": per_dataset, "errors": errors}
