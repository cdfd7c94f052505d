"""Plan and run a training session: the round loop.

``plan_session`` checks everything it can before anything is written (task,
datasets, schemas, files, DP settings), so bad input leaves the registry as it
was. ``run_session`` records the session, trains round by round through a
backend, records each round with its participants and epsilon, evaluates,
saves the model and registers it as a new version.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from tffprod.backends.base import Backend, SiteTarget
from tffprod.budgets import BudgetPlan, plan_budgets
from tffprod.datafiles import content_hash
from tffprod.errors import DatasetError, SessionError, SpecError, TffprodError
from tffprod.sampling import ClientSampler, Population, check_population
from tffprod.schema import Schema
from tffprod.spec import SessionSpec
from tffprod.task import Task, load_task


@dataclasses.dataclass(frozen=True)
class SessionPlan:
    """A validated session: the spec, its task and the registry rows it reads."""

    spec: SessionSpec
    task: Task
    datasets: tuple[Mapping[str, Any], ...]
    eval_datasets: tuple[Mapping[str, Any], ...]
    fmt: str
    budget: BudgetPlan = BudgetPlan({}, 0, None)

    @property
    def sites(self) -> list[SiteTarget]:
        by_site: dict[str, list] = {}
        for row in self.datasets + self.eval_datasets:
            by_site.setdefault(row["site"], []).append(row)
        return [SiteTarget(name, tuple(rows)) for name, rows in by_site.items()]

    @property
    def population(self) -> Population:
        """The clients the session trains on and how each round samples them."""
        return Population(self.datasets, self.spec.sampling)

    @property
    def sampling_rate(self) -> float:
        """A client's chance to train in a round: q (Poisson), k / N (fixed; accounted as k of N
        without replacement, see ``population.accounting()``), or 1."""
        return self.population.sampling_rate

    @property
    def privacy_unit(self) -> str:
        """``client (column customer_id)`` or ``site dataset (site-level)``."""
        return self.population.unit

    @property
    def training_sites(self) -> list[str]:
        return list(dict.fromkeys(row["site"] for row in self.datasets))


@dataclasses.dataclass(frozen=True)
class RoundReport:
    """What the progress callback sees after each round."""

    round_num: int
    rounds: int
    metrics: dict
    sites: list
    duration_s: float
    epsilon: Optional[float]
    clients: Optional[int] = None
    epsilon_pld: Optional[float] = None


def resolve_datasets(registry: Any, refs: list[str], task: Task, *, verify_files: bool = True) -> list[Mapping[str, Any]]:
    rows = []
    for ref in refs:
        row = registry.get_dataset(ref)
        Schema.from_dict(row["schema"]).check_provides(task.schema, what=f"dataset {row['ref']}")
        if verify_files and not row["path"].startswith("site://"):  # site data is checked by its site
            path = Path(row["path"])
            if not path.is_file():
                raise DatasetError(f"dataset {row['ref']}: file {path} is missing")
            if content_hash(path) != row["content_hash"]:
                raise DatasetError(
                    f"dataset {row['ref']}: {path} changed since it was registered; register it again"
                )
        rows.append(row)
    return rows


def plan_session(spec: SessionSpec, *, registry: Any, verify_files: bool = True) -> SessionPlan:
    """Validate a spec against the registry; writes nothing.

    Raises:
        TaskLoadError, NotFoundError, SchemaMismatchError, DatasetError, SpecError,
        PrivacyBudgetError.
    """
    task = load_task(spec.task)
    datasets = resolve_datasets(registry, list(spec.datasets), task, verify_files=verify_files)
    eval_datasets = resolve_datasets(registry, list(spec.eval_datasets), task, verify_files=verify_files)
    formats = sorted({row["format"] for row in datasets + eval_datasets})
    if len(formats) != 1:
        raise DatasetError(f"datasets of one session must share a format, these mix {', '.join(formats)}")
    sites = {row["site"] for row in datasets}
    if spec.min_sites > len(sites):
        raise SpecError(f"min_sites is {spec.min_sites} but the datasets span only {len(sites)} site(s)")
    if spec.federation is not None:
        _check_federation(registry, spec.federation, datasets + eval_datasets)
    population = Population(tuple(datasets), spec.sampling)
    check_population(population)
    z, expected = spec.dp.noise_multiplier, population.expected_clients_per_round
    if population.client_level and spec.dp.mechanism == "gaussian_adaptive" and z and z >= 0.1 * expected:
        raise SpecError(f"'dp.noise_multiplier' = {z} is too large for gaussian_adaptive with {expected:g} expected "
                        f"clients per round: TFF needs noise_multiplier < 0.1 * clients per round")
    budget = plan_budgets(spec, datasets, registry=registry)
    return SessionPlan(spec, task, tuple(datasets), tuple(eval_datasets), formats[0], budget)


def _check_federation(registry: Any, federation: str, rows: list[Mapping[str, Any]]) -> None:
    """Refuse datasets at sites outside the session's federation."""
    members = set(registry.get_federation(federation)["sites"])
    for row in rows:
        if row["site"] not in members:
            raise SpecError(f"dataset {row['ref']} is at site {row['site']}, which is not in federation "
                            f"'{federation}' (add it with 'tffprod federation add-site {federation} {row['site']}')")


def initial_weights(task: Task, seed: int) -> Any:
    """The task model's initial weights, drawn reproducibly from ``seed``."""
    import tensorflow as tf
    import tensorflow_federated as tff

    tf.keras.utils.set_random_seed(seed)
    return tff.learning.models.ModelWeights.from_model(task.model_fn())


def training_process(plan: SessionPlan) -> Any:
    """The session's TFF learning process over dataset references (imports TFF)."""
    from tffprod.process import build_training_process

    spec = plan.spec
    return build_training_process(
        plan.task, spec.dp, fmt=plan.fmt, seed=spec.seed,
        clients_per_round=plan.population.expected_clients_per_round,
    )


class _Trainer:
    """Holds the compiled process and the server state between rounds.

    With ``frozen`` (a plan's computations), sites run the plan's frozen training
    computation instead of a fresh compile; its type must match the process's.
    """

    def __init__(self, plan: SessionPlan, backend: Backend, frozen: Any = None) -> None:
        import tensorflow_federated as tff

        from tffprod.router import RoundRouter

        spec = plan.spec
        self._Struct = tff.structure.Struct
        self.process = training_process(plan)
        self.ctx = backend.coordinator_context()
        form = tff.backends.native.compile_to_mergeable_comp_form(self.process.next)
        site_computation = None
        if frozen is not None:
            from tffprod.plan import check_signature

            check_signature("train", frozen.train, form.up_to_merge, frozen.plan_id)
            site_computation = frozen.train
        self.router = RoundRouter(backend, form, timeout_s=spec.round_timeout_s, min_sites=spec.min_sites,
                                  site_computation=site_computation)
        state = self.ctx.invoke(self.process.initialize, None)
        self.state = self.ctx.invoke(
            self.process.set_model_weights, self._Struct.unnamed(state, initial_weights(plan.task, spec.seed))
        )
        self.min_sites = spec.min_sites
        self.refs_by_site: dict[str, list[str]] = {}
        if not plan.population.client_level:
            for row in plan.datasets:
                self.refs_by_site.setdefault(row["site"], []).append(backend.reference(row))

    def run_round(self, refs_by_site: Optional[Mapping[str, list[str]]] = None):
        """One round over ``refs_by_site`` (default: every dataset, one client each)."""
        refs = self.refs_by_site if refs_by_site is None else refs_by_site
        outcome = self.router.run_round(self.state, refs, min_sites=min(self.min_sites, len(refs)))
        self.state = outcome.output.state
        return outcome

    def dp_event(self) -> Any:
        """The DP event TFF's aggregator reports for the last round.

        Raises:
            SessionError: the process has no TFF DP aggregator state (e.g. a custom
                ``process_builder`` that ignored the DP aggregator it was given).
        """
        from tensorflow_federated.python.aggregators.differential_privacy import extract_dp_event_from_state

        try:
            return extract_dp_event_from_state(self.state.aggregator)
        except Exception as e:
            raise SessionError(
                "the spec asks for DP but the training process reports no DP event; a custom "
                f"process_builder must use the aggregator it is given ({type(e).__name__})"
            ) from e

    def weights(self) -> Any:
        return self.ctx.invoke(self.process.get_model_weights, self.state)

    def close(self) -> None:
        self.router.close()


def _participants(outcome: Any, plan: SessionPlan) -> list[dict]:
    """One record per called site; ``examples`` is None for sampled clients (their sizes stay at the site)."""
    examples = {}
    for row in plan.datasets:
        examples[row["site"]] = examples.get(row["site"], 0) + int(row["num_examples"])
    client_level = plan.population.client_level
    out = []
    for site in outcome.sites if outcome else []:
        record = site.to_dict()
        record["examples"] = 0 if site.status != "ok" else None if client_level else examples.get(site.site, 0)
        out.append(record)
    return out


def _refs_by_site(sampler: ClientSampler, backend: Backend) -> dict[str, list[str]]:
    """This round's sampled clients as references, grouped by site (sites without any are left out)."""
    refs: dict[str, list[str]] = {}
    for client in sampler.draw():
        refs.setdefault(client.dataset["site"], []).append(backend.reference(client.reference_row()))
    return refs


def run_session(
    plan: SessionPlan,
    *,
    registry: Any,
    backend: Backend,
    artifacts_dir: Path,
    progress: Optional[Callable[[RoundReport], None]] = None,
    frozen: Any = None,
) -> dict:
    """Record and run a planned session; returns the finished session's registry row.

    The backend must not be open yet; this opens it for the session's sites and
    closes it at the end, ending every process it started. ``frozen``
    (:class:`tffprod.plan.FrozenComputations`) runs an approved plan's computations
    at the sites, exactly as approved.

    Raises:
        SessionError: training failed; the session is recorded as failed with the reason.
    """
    from tffprod.metrics import plain_metrics

    spec = plan.spec
    session = registry.create_session(
        name=spec.name,
        spec=dict(spec.to_dict(), plan_id=frozen.plan_id) if frozen is not None else spec.to_dict(),
        task=plan.task.summary(),
        backend=backend.name,
        rounds_planned=spec.rounds,
        datasets=[row["ref"] for row in plan.datasets],
        privacy=plan.population.describe(),
    )
    session_id = session["id"]
    registry.start_session(session_id)
    registry.record_action("session.run", session_id, {
        "name": spec.name, "plan_id": frozen.plan_id if frozen is not None else None, "backend": backend.name,
        "datasets": session["datasets"], "rounds_planned": spec.rounds})
    ledger = _ledger(spec)
    trainer = None
    try:
        backend.frozen = frozen is not None
        backend.federation = spec.federation
        backend.open(plan.sites)
        trainer = _Trainer(plan, backend, frozen)
        train_metrics: dict = {}
        rounds = min(spec.rounds, plan.budget.max_rounds) if plan.budget.limited else spec.rounds
        population = plan.population
        sampler = ClientSampler(population, seed=spec.seed) if population.client_level else None
        event = None  # TFF's DP event of the last round that ran
        for round_num in range(1, rounds + 1):
            refs = _refs_by_site(sampler, backend) if sampler else None
            # A round in which nobody was sampled leaves the state as it was, and still counts for privacy.
            outcome = trainer.run_round(refs) if refs is None or refs else None
            event = trainer.dp_event() if ledger and outcome else event
            epsilon = ledger.record_round(event=event, **population.accounting()) if ledger else None
            epsilon_pld = ledger.epsilon("pld") if ledger and population.client_level and \
                ledger.supports("pld") else None
            metrics = plain_metrics(outcome.output.metrics) if outcome else {}
            train_metrics = metrics.get("client_work", {}).get("train", metrics) if outcome else train_metrics
            participants = _participants(outcome, plan)
            clients = sum(p["clients"] for p in participants if p["status"] == "ok")
            duration_s = outcome.duration_s if outcome else 0.0
            registry.record_round(
                session_id,
                round_num=round_num,
                metrics=metrics,
                participants=participants,
                duration_s=duration_s,
                epsilon=epsilon,
                spend=_spend(plan, epsilon, round_num) if ledger else None,
                sampling_rate=population.sampling_rate,
                clients=clients,
                epsilon_pld=epsilon_pld,
            )
            if progress:
                progress(RoundReport(round_num, spec.rounds, train_metrics, participants, duration_s, epsilon,
                                     clients, epsilon_pld))
        stopped = None if rounds == spec.rounds else (
            f"stopped after round {rounds} of {spec.rounds}: one more would exceed the remaining privacy "
            f"budget of {min(plan.budget.remaining, key=plan.budget.remaining.get)}")
        weights = trainer.weights()
        version = _register_model(plan, registry, backend, session_id, weights, train_metrics, ledger, artifacts_dir,
                                  stopped, frozen)
        registry.finish_session(session_id, status="finished")
    except BaseException as e:
        reason = str(e) if isinstance(e, TffprodError) else f"{type(e).__name__}: {e}"
        status = "cancelled" if isinstance(e, KeyboardInterrupt) else "failed"
        registry.finish_session(session_id, status=status, error=reason.splitlines()[0] if reason else status)
        registry.record_action("session.end", session_id, {"status": status, "error": reason.splitlines()[0] if
                                                            reason else status})
        if isinstance(e, (TffprodError, KeyboardInterrupt)):
            raise
        raise SessionError(f"session {session_id} failed: {reason.splitlines()[0]}") from e
    finally:
        if trainer:
            trainer.close()
        backend.close()
    registry.record_action("session.end", session_id, {
        "status": "finished", "model_version": f"{spec.name}:{version['version']}"})
    result = registry.get_session(session_id)
    result["model_version"] = version
    return result


def _spend(plan: SessionPlan, epsilon: float, rounds: int) -> list[dict]:
    """What this session has spent so far on each training dataset (every dataset, every round)."""
    identities = dict.fromkeys((row["site"], row["name"]) for row in plan.datasets)
    return [{"site": site, "name": name, "epsilon": epsilon, "delta": plan.spec.dp.delta, "rounds": rounds}
            for site, name in identities]


def _ledger(spec: SessionSpec):
    if not spec.dp.enabled:
        return None
    from tffprod.accounting import PrivacyLedger

    return PrivacyLedger(noise_multiplier=spec.dp.noise_multiplier, delta=spec.dp.delta)


def _model_dp(plan: SessionPlan, ledger: Any) -> dict:
    """The spec's [dp] table, plus (with DP) the unit of privacy, the sampling and every accountant's epsilon."""
    dp = plan.spec.dp.to_dict()
    if ledger is None:
        return dp
    population = plan.population
    privacy = population.describe()
    # Site-level sessions report RDP only, as before; PLD cannot account fixed-size samples.
    epsilons = {name: ledger.epsilon(name) if name in privacy["accountants"] else None for name in ("rdp", "pld")}
    note = "dp_accounting's PLD accountant does not support fixed-size sampling; RDP only" \
        if population.client_level and epsilons["pld"] is None else None
    privacy.update(rounds=ledger.rounds, epsilon=epsilons, note=note)
    return {**dp, "privacy": privacy}


def _register_model(plan, registry, backend, session_id, weights, train_metrics, ledger, artifacts_dir,
                    stopped, frozen=None) -> dict:
    from tffprod.evaluation import evaluate
    from tffprod.export import save_artifacts

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
    from tffprod.lineage import build_lineage

    dp = _model_dp(plan, ledger)
    epsilon, delta = (ledger.epsilon(), spec.dp.delta) if ledger else (None, None)
    datasets = [row["ref"] for row in plan.datasets]
    lineage = build_lineage(registry, session_id=session_id, datasets=datasets,
                            eval_datasets=[row["ref"] for row in plan.eval_datasets], dp=dp, epsilon=epsilon,
                            delta=delta, task_path=spec.task, train_metrics=train_metrics, evaluation=evaluation)
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
    )
    if evaluation:
        for ref, m in evaluation["datasets"].items():
            registry.add_evaluation(model=spec.name, version=version["version"], dataset=ref, metrics=m,
                                    session_id=session_id)
        registry.add_evaluation(model=spec.name, version=version["version"], kind="overall",
                                dataset=",".join(evaluation["datasets"]), metrics=evaluation["overall"],
                                session_id=session_id)
    return version


def artifacts_dir_for(registry_path: str | Path) -> Path:
    """Where model artifacts live by default: ``artifacts/`` beside the registry file."""
    return Path(registry_path).resolve().parent / "artifacts"


def train(
    spec: SessionSpec,
    *,
    registry: Any,
    backend: Backend,
    artifacts_dir: Optional[Path] = None,
    progress: Optional[Callable[[RoundReport], None]] = None,
) -> dict:
    """Plan, record and run a session from ``spec``: the whole of ``tffprod session run``."""
    plan = plan_session(spec, registry=registry)
    return run_session(
        plan,
        registry=registry,
        backend=backend,
        artifacts_dir=artifacts_dir or artifacts_dir_for(registry.path),
        progress=progress,
    )
