"""A finished session's model: evaluate it, save its artifacts, register the version.

Called by the round loop (:mod:`tffprod.sessions.runner`) when the last round is done. The
version, its evaluations, the session's end and its audit entry commit together:
a coordinator killed before that commit leaves a resumable session and no version.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tffprod.registry.protocol import ModelVersionRow, RegistryStore


def model_dp(plan: Any, ledger: Any, frozen: Any = None) -> dict:
    """The spec's [dp] table, plus (with DP) the unit of privacy, the sampling, every accountant's epsilon,
    and what the sites' releases gave the coordinator (``against_coordinator``)."""
    dp = plan.spec.dp.to_dict()
    if ledger is None:
        return dp
    population = plan.population
    privacy = population.describe()
    # Site-level sessions report RDP only, as before; PLD cannot account fixed-size samples.
    epsilons = {name: ledger.epsilon(name) if name in privacy["accountants"] else None for name in ("rdp", "pld")}
    note = "dp_accounting's PLD accountant does not support fixed-size sampling; RDP only" \
        if population.client_level and epsilons["pld"] is None else None
    privacy.update(rounds=ledger.rounds, epsilon=epsilons, note=note,
                   against_coordinator=_against_coordinator(plan, ledger.rounds, frozen))
    evaluation = (frozen.plan.privacy.get("evaluation") if frozen is not None else None)
    if plan.eval_datasets:  # what each evaluation dataset's one release cost, or that it was not noised
        privacy["evaluation"] = {"noise_multiplier": evaluation["noise_multiplier"], "epsilon": evaluation["epsilon"],
                                 "bound": evaluation["bound"]} if evaluation else {"noised": False}
    return {**dp, "privacy": privacy}


def _against_coordinator(plan: Any, rounds: int, frozen: Any) -> dict:
    """Where the noise was added, and the epsilon of one site's releases as the coordinator saw them
    (:func:`tffprod.privacy.terms.release_epsilon`; None when the releases were un-noised)."""
    from tffprod.privacy.terms import release_epsilon

    spec = plan.spec
    terms = frozen.plan.privacy if frozen is not None else {
        "mechanism": spec.dp.mechanism, "noise_multiplier": spec.dp.noise_multiplier, "delta": spec.dp.delta,
        "noise_placement": spec.dp.noise_placement, "noise_sites": spec.min_sites}
    epsilon, _ = release_epsilon(terms, rounds)
    placement = str(terms.get("noise_placement", "coordinator"))
    return {"noise_placement": placement, "secure_aggregation": "secure_aggregation" in terms,
            "epsilon": epsilon if epsilon != float("inf") else None}


def register_model(plan, registry: RegistryStore, backend, session_id, weights, train_metrics, ledger, artifacts_dir,
                    stopped, frozen=None) -> ModelVersionRow:
    from tffprod.models.export import save_artifacts
    from tffprod.privacy.terms import evaluation_charges
    from tffprod.training.evaluation import evaluate

    spec = plan.spec
    evaluation = None
    if plan.eval_datasets:
        evaluation = evaluate(plan.task, weights, plan.eval_datasets, backend=backend, fmt=plan.fmt,
                              timeout_s=spec.round_timeout_s,
                              site_computation=frozen.eval if frozen is not None else None)
    artifact = save_artifacts(plan.task, weights, Path(artifacts_dir) / spec.name / session_id)
    metrics = {"train": train_metrics}
    if stopped:
        metrics["stopped"] = stopped
    if evaluation:
        metrics["eval"] = evaluation["overall"]
        if evaluation["errors"]:
            metrics["eval_errors"] = evaluation["errors"]
    from tffprod.models.lineage import build_lineage

    dp = model_dp(plan, ledger, frozen)
    epsilon, delta = (ledger.epsilon(), spec.dp.delta) if ledger else (None, None)
    datasets = [row["ref"] for row in plan.datasets]
    lineage = build_lineage(registry, session_id=session_id, datasets=datasets,
                            eval_datasets=[row["ref"] for row in plan.eval_datasets], dp=dp, epsilon=epsilon,
                            delta=delta, task_path=spec.task, train_metrics=train_metrics, evaluation=evaluation)
    evaluations = []
    if evaluation:
        evaluations = [{"dataset": ref, "metrics": m} for ref, m in evaluation["datasets"].items()]
        evaluations.append({"dataset": ",".join(evaluation["datasets"]), "metrics": evaluation["overall"],
                            "kind": "overall"})
    with registry.atomic():
        version = registry.add_model_version(
            name=spec.name,
            session_id=session_id,
            artifact_path=str(artifact.resolve()),
            metrics=metrics,
            dp=dp,
            epsilon=epsilon,
            delta=delta,
            datasets=datasets,
            task=plan.task.summary(),
            lineage=lineage,
            evaluations=evaluations,
            finishes_session=True,
        )
        if evaluation is not None and frozen is not None and \
                (charges := evaluation_charges(frozen.plan.privacy, plan.eval_datasets)):
            registry.record_evaluation_spend(charges, session_id=session_id)
        registry.record_action("session.end", session_id, {
            "status": "finished", "model_version": f"{spec.name}:{version['version']}"})
    return version

