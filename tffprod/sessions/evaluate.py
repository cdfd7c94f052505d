"""Evaluating a registered model version at the sites that hold the evaluation data.

A registry use case above :mod:`tffprod.training.evaluation` (the TFF mechanics): checks
the version's access list, resolves the datasets, runs an approved evaluation plan when
one is given, and records the results against the version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from tffprod.backends.base import Backend, SiteTarget
from tffprod.errors import PlanError, SessionError
from tffprod.models.access import require_access
from tffprod.models.export import load_weights
from tffprod.privacy.terms import evaluation_charges
from tffprod.protocol.plan_document import load_plan
from tffprod.sessions.approval import thaw
from tffprod.sessions.planning import resolve_datasets
from tffprod.task import load_task

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore

__all__ = ["evaluate_version"]


def evaluate_version(registry: RegistryStore, model_ref: str, dataset_refs: Sequence[str], *, backend: Backend,
                     timeout_s: float = 600.0, plan_path: Any = None,
                     say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Evaluate a registered model version on registered datasets and record the results.

    Each dataset's site must be allowed to receive the version (its access list); the
    results are recorded against the version per dataset and overall.

    Args:
        model_ref: ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``.
        dataset_refs: ``SITE/NAME[:VERSION]`` of each dataset.
        plan_path: an evaluation plan of this version and these datasets, approved at their
            sites (``tffprod model eval-plan``): the sites then release its evaluation.
        say: told what the slow part does, once the request checks out.

    Returns:
        ``{"model": name, "version": n, "overall": metrics, "datasets": {ref: metrics}, "errors": {...}}``.

    Raises:
        AccessDeniedError: a dataset's site may not receive the version (nothing runs).
        PlanError: the plan does not verify.
        SessionError: the plan is not an evaluation plan of this version and these datasets.
    """
    version = registry.get_model_version(model_ref)
    for site in dict.fromkeys(registry.get_dataset(ref)["site"] for ref in dataset_refs):
        require_access(registry, version, site)
    task = load_task(registry.get_session(version["session_id"])["spec"]["task"])
    rows = resolve_datasets(registry, list(dataset_refs), task)
    formats = sorted({row["format"] for row in rows})
    if len(formats) != 1:
        raise SessionError(f"datasets evaluated together must share a format, these mix {', '.join(formats)}")
    if plan_path is None and backend.name == "remote":
        _refuse_sites_requiring_approval(registry, model_ref, rows)
    frozen = None if plan_path is None else _evaluation_plan(plan_path, version, rows)
    say(f"evaluating {version['name']}:{version['version']} on {len(rows)} dataset(s): loading TensorFlow and the "
        "model, then each site evaluates its data (about 15-20 s)")
    weights = load_weights(version["artifact_path"])
    by_site: dict[str, list] = {}
    for row in rows:
        by_site.setdefault(row["site"], []).append(row)
    with backend:
        backend.open([SiteTarget(site, tuple(site_rows)) for site, site_rows in by_site.items()], frozen=frozen)
        from tffprod.training.evaluation import evaluate  # TF

        result = evaluate(task, weights, rows, backend=backend, fmt=formats[0], timeout_s=timeout_s,
                          site_computation=None if frozen is None else frozen.eval)
    for ref, metrics in result["datasets"].items():
        registry.add_evaluation(model=version["name"], version=version["version"], dataset=ref, metrics=metrics)
    registry.add_evaluation(model=version["name"], version=version["version"], kind="overall",
                            dataset=",".join(result["datasets"]), metrics=result["overall"])
    if frozen is not None and (charges := evaluation_charges(frozen.plan.privacy, rows)):
        registry.record_evaluation_spend(charges, plan_id=frozen.plan.plan_id)
    return {"model": version["name"], "version": version["version"], **result}


def _refuse_sites_requiring_approval(registry: RegistryStore, model_ref: str,
                                     rows: Sequence[Mapping[str, Any]]) -> None:
    """Before anything runs: sites that run only approved plans evaluate only under an evaluation plan."""
    from tffprod.sites.admin import sites_requiring_approval

    strict = sites_requiring_approval(registry, [row["site"] for row in rows])
    if strict:
        datasets = " ".join(f"--dataset {row['ref']}" for row in rows)
        raise PlanError(f"site{'s' if len(strict) > 1 else ''} {', '.join(strict)} evaluate only plans their "
                        f"operators approved; nothing was run. Make an evaluation plan ('tffprod model eval-plan "
                        f"{model_ref} {datasets} --out PLAN', with --eval-noise-multiplier for datasets with a "
                        f"privacy budget), have each site approve it ('tffprod site approve PLAN --config "
                        f"SITE.toml'), then run 'tffprod eval {model_ref} {datasets} --backend remote --plan PLAN'")


def _evaluation_plan(path: Any, version: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Any:
    """The frozen computations of an evaluation plan made for ``version`` and exactly ``rows``."""
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
