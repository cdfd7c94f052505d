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
        from tffprod.sessions.approval import check_signature

        check_signature("eval", site_computation, form.up_to_merge, "of this session")
    router = RoundRouter(backend, form, timeout_s=timeout_s, site_computation=site_computation)
    try:
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
    finally:
        router.close()
    return {"overall": overall, "datasets": per_dataset, "errors": errors}


def evaluate_version(registry: Any, model_ref: str, dataset_refs: Sequence[str], *, backend: Backend,
                     timeout_s: float = 600.0, plan_path: Any = None) -> dict[str, Any]:
    """Evaluate a registered model version on registered datasets and record the results.

    Each dataset's site must be allowed to receive the version (its access list); the
    results are recorded against the version per dataset and overall.

    Args:
        model_ref: ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``.
        dataset_refs: ``SITE/NAME[:VERSION]`` of each dataset.
        plan_path: an evaluation plan of this version and these datasets, approved at their
            sites (``tffprod model eval-plan``): the sites then release its evaluation.

    Returns:
        ``{"model": name, "version": n, "overall": metrics, "datasets": {ref: metrics}, "errors": {...}}``.

    Raises:
        AccessDeniedError: a dataset's site may not receive the version (nothing runs).
        PlanError: the plan does not verify.
        SessionError: the plan is not an evaluation plan of this version and these datasets.
    """
    from tffprod.backends.base import SiteTarget
    from tffprod.models.export import load_weights
    from tffprod.models.access import require_access
    from tffprod.sessions.runner import resolve_datasets
    from tffprod.task import load_task

    version = registry.get_model_version(model_ref)
    for site in dict.fromkeys(registry.get_dataset(ref)["site"] for ref in dataset_refs):
        require_access(registry, version, site)
    task = load_task(registry.get_session(version["session_id"])["spec"]["task"])
    rows = resolve_datasets(registry, list(dataset_refs), task)
    formats = sorted({row["format"] for row in rows})
    if len(formats) != 1:
        raise SessionError(f"datasets evaluated together must share a format, these mix {', '.join(formats)}")
    frozen = None if plan_path is None else _evaluation_plan(plan_path, version, rows)
    weights = load_weights(version["artifact_path"])
    by_site: dict[str, list] = {}
    for row in rows:
        by_site.setdefault(row["site"], []).append(row)
    with backend:
        backend.frozen = frozen
        backend.open([SiteTarget(site, tuple(site_rows)) for site, site_rows in by_site.items()])
        result = evaluate(task, weights, rows, backend=backend, fmt=formats[0], timeout_s=timeout_s,
                          site_computation=None if frozen is None else frozen.eval)
    for ref, metrics in result["datasets"].items():
        registry.add_evaluation(model=version["name"], version=version["version"], dataset=ref, metrics=metrics)
    registry.add_evaluation(model=version["name"], version=version["version"], kind="overall",
                            dataset=",".join(result["datasets"]), metrics=result["overall"])
    return {"model": version["name"], "version": version["version"], **result}


def _evaluation_plan(path: Any, version: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Any:
    """The frozen computations of an evaluation plan made for ``version`` and exactly ``rows``."""
    from tffprod.sessions.approval import load_plan, thaw

    plan = load_plan(path)
    model = plan.document.get("model") or {}
    if not plan.evaluation_only or (model.get("name"), model.get("version")) != (version["name"], version["version"]):
        raise SessionError(f"plan {plan.plan_id[:16]} is not an evaluation plan of {version['name']}:"
                           f"{version['version']}; make one with 'tffprod model eval-plan'")
    ours = sorted((row["site"], row["name"], row["content_hash"]) for row in rows)
    if sorted((d["site"], d["name"], d["content_hash"]) for d in plan.datasets) != ours:
        raise SessionError(f"plan {plan.plan_id[:16]} evaluates other datasets (or other versions of them) than "
                           "these; make a new one with 'tffprod model eval-plan'")
    return thaw(plan)
