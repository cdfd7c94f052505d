"""Session plans: the coordinator's side of computation approval.

``make_plan`` compiles a validated session once and freezes what will run at
sites (the per-site part of a training round and of evaluation) as
deterministically serialized ``Computation`` protos with their SHA-256, beside
the spec, the task and model summary, the DP terms and the datasets. A site
operator reviews and approves the plan (``tffprod site plan show``, ``tffprod
site approve``; :mod:`tffprod.executors.approvals` verifies it). ``session run
--plan`` then ships exactly those bytes: the frozen computations run on site
contexts without a compiler (``compiler_fn=None``), so the hash a site computes
on the wire is the hash it approved (shared/design/tff-0.87-facts.md section 6).

Compiling imports TensorFlow and TFF; reading a plan does not.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from tffprod.errors import NotFoundError, PrivacyBudgetError, SessionError, SpecError
from tffprod.privacy.mechanisms import get_mechanism
from tffprod.privacy.placement import AT_SITES, model_noise_multiplier
from tffprod.protocol.plan_document import PLAN_FORMAT, Plan, canonical_id, load_plan
from tffprod.sessions.planning import SessionPlan

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore


__all__ = ["FrozenComputations", "check_datasets", "check_whole_plan_fits", "coordinator_identities", "freeze",
           "load_plan", "make_eval_plan", "make_plan", "privacy_terms", "single_release_plan", "thaw",
           "with_secure_aggregation", "write_plan"]


def privacy_terms(plan: SessionPlan) -> dict[str, Any]:
    """The DP terms a site's ledger needs: mechanism, noise multiplier, delta, the round's
    sampling (``sampling_rate`` q, or ``fixed_sample`` [N, k]) and the unit of privacy."""
    dp = plan.spec.dp
    if not dp.enabled:
        return {"mechanism": "none", "unit": plan.privacy_unit}
    from tffprod.privacy.accounting import epsilon_for

    noise_multiplier, clip, delta = dp.noise_multiplier, dp.clip, dp.delta
    # An enabled [dp] has all three (DPConfig checks).
    assert noise_multiplier is not None and clip is not None and delta is not None
    accounting = plan.population.accounting()
    terms: dict[str, Any] = {
        "mechanism": dp.mechanism,
        "noise_multiplier": float(noise_multiplier),
        "clip": float(clip),
        "delta": float(delta),
        "sampling_rate": float(plan.sampling_rate),
        "accountant": "rdp",
        "unit": plan.privacy_unit,
    }
    if dp.noise_placement in AT_SITES:
        terms.update(noise_placement=dp.noise_placement, noise_sites=plan.spec.min_sites)
    if dp.eval_noise_multiplier is not None and plan.eval_datasets:
        terms["evaluation"] = {"noise_multiplier": float(dp.eval_noise_multiplier), "bound": float(dp.eval_bound or 0),
                               "epsilon": epsilon_for(noise_multiplier=float(dp.eval_noise_multiplier), rounds=1,
                                                      delta=float(delta))}
    terms["planned_epsilon"] = epsilon_for(noise_multiplier=model_noise_multiplier(terms), rounds=plan.spec.rounds,
                                           delta=float(delta), **accounting)
    if "fixed_sample" in accounting:
        terms["fixed_sample"] = list(accounting["fixed_sample"])
    return terms


def with_secure_aggregation(terms: dict[str, Any], train_entry: Mapping[str, Any], plan: SessionPlan) -> dict[str, Any]:
    """``terms`` with the plan's ``secure_aggregation``: its training sites, quantization and modulus, and
    the effective noise multiplier of the sum of discrete noise shares, which its epsilon is planned at."""
    from tffprod.privacy.accounting import epsilon_for
    from tffprod.privacy.secagg.settings import layout_of, plan_terms, round_settings
    from tffprod.protocol.terms import ReleaseTerms

    release = ReleaseTerms(train_entry, base64.b64decode(train_entry["proto"]))
    secure = plan_terms([row["site"] for row in plan.datasets])
    settings = round_settings({**terms, "secure_aggregation": secure}, secure["sites"],
                              layout_of(release.result_slots()))
    terms = {**terms, "secure_aggregation": {**secure, "noise_multiplier": settings.noise_multiplier}}
    terms["planned_epsilon"] = epsilon_for(noise_multiplier=model_noise_multiplier(terms), rounds=plan.spec.rounds,
                                           delta=float(terms["delta"]), **plan.population.accounting())
    return terms


def freeze(role: str, computation: Any, initial_state: Any, free: list[str], bound: Any = None,
            fallback_free: list[str] | None = None) -> dict[str, Any]:
    """A plan's computation entry: the frozen bytes and their release terms (:mod:`tffprod.protocol.terms`).

    Every state leaf outside the ``free`` prefixes is pinned to its value in ``initial_state``; when a
    ``free`` prefix names no leaf (a state laid out otherwise), ``fallback_free`` is used instead.
    """
    import tensorflow_federated as tff

    from tffprod.backends.release import leaf_at
    from tffprod.protocol.signature import SiteSignature
    from tffprod.protocol.terms import pinned_entry

    compiled = tff.backends.native.desugar_and_transform_to_native(computation)
    proto = tff.framework.serialize_computation(compiled)
    data = proto.SerializeToString(deterministic=True)
    leaves = SiteSignature(proto).state
    under = lambda path, prefix: path == prefix or path.startswith(prefix + "/")  # noqa: E731
    if fallback_free is not None and not all(any(under(leaf.path, p) for leaf in leaves) for p in free):
        free = fallback_free
    pinned = [pinned_entry(leaf, leaf_at(initial_state, leaf.path)) for leaf in leaves
              if not any(leaf.path == p or leaf.path.startswith(p + "/") for p in free)]
    entry = {"role": role, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
             "type_signature": str(compiled.type_signature), "proto": base64.b64encode(data).decode("ascii"),
             "state": {"free": free, "pinned": pinned}}
    if bound is not None:
        entry["bound"] = bound
    return entry


# The state a coordinator chooses each round: the model, and the server optimizer's state (which only
# the coordinator's part of a round reads). Everything else is pinned by the plan.
FREE_TRAIN_STATE = ["global_model_weights", "finalizer"]
FREE_EVAL_STATE = ["global_model_weights"]
def _initial_states(*processes: Any) -> list[Any]:
    """Each process's initial server state, computed on a worker of its own (stopped after)."""
    import tempfile

    from tffprod.backends.contexts import channel_context, insecure_channel
    from tffprod.workers.process import WorkerProcess

    with tempfile.TemporaryDirectory(prefix="tffprod-plan-") as logs, \
            WorkerProcess(name="plan", log_path=Path(logs) / "plan-worker.log") as worker:
        context = channel_context(insecure_channel(worker.address))
        return [context.invoke(process.initialize, None) for process in processes]


def _train_bound(plan: SessionPlan) -> dict[str, Any] | None:
    """The fixed-clip DP bound on a training release: the clipped sum (result element 1)."""
    dp = plan.spec.dp
    bound = get_mechanism(dp.mechanism).release_bound(dp)
    return None if bound is None else {"result": ["1"], "l2_norm_per_client": bound}


def make_plan(plan: SessionPlan, *, coordinators: Mapping[str, str] | None = None,
              cache_dir: Optional[Path] = None, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Compile ``plan``'s site computations and return the plan document (with its ``plan_id``).

    ``coordinators`` (site -> certificate CN) binds the plan to this coordinator: a site refuses
    the plan's computations from any other caller (see :func:`coordinator_identities`). With
    ``cache_dir``, computations compiled before for the same content are reused, without importing
    TensorFlow (:mod:`tffprod.sessions.plan_cache`). ``say`` is told which, before the slow part.

    Raises:
        PrivacyBudgetError: the plan samples clients or sites and the budgets cannot hold all
            its rounds (see :func:`check_whole_plan_fits`).
    """
    from tffprod.sessions import plan_cache
    from tffprod.sites.admin import local_versions

    check_whole_plan_fits(plan)
    spec = plan.spec
    key = plan_cache.cache_key(plan) if cache_dir is not None else None
    computations = plan_cache.load(cache_dir, key) if cache_dir is not None and key is not None else None
    if computations is not None:
        say(f"planning {spec.name}: its datasets check out; reusing the computations compiled for the same content "
            f"({Path(cache_dir or '') / str(key)[:16]}...)")
    else:
        say(f"planning {spec.name}: its datasets check out; compiling what the sites will run (TensorFlow loads "
            "first; about 20-40 s on 2 cores; an unchanged spec plans in seconds next time)")
        computations, coordinator = _compile(plan)
        if cache_dir is not None and key is not None:
            plan_cache.store(cache_dir, key, computations, coordinator)
    datasets = [{"role": role, "ref": row["ref"], "site": row["site"], "name": row["name"],
                 "content_hash": row["content_hash"], "num_examples": int(row["num_examples"]),
                 "client_id": row.get("client_id")}
                for role, rows in (("train", plan.datasets), ("eval", plan.eval_datasets)) for row in rows]
    body = {
        "format": PLAN_FORMAT,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": local_versions(),
        "session": {"name": spec.name, "rounds": spec.rounds, "seed": spec.seed, "min_sites": spec.min_sites,
                    "federation": spec.federation},
        "spec": spec.to_dict(),
        "task": plan.task.summary(),
        "privacy": with_secure_aggregation(privacy_terms(plan), computations[0], plan)
        if spec.dp.secure_aggregation else privacy_terms(plan),
        "datasets": datasets,
        "coordinators": coordinators or {},
        "computations": computations,
    }
    return {**body, "plan_id": canonical_id(body)}


def _compile(plan: SessionPlan) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The plan's site computations, compiled and frozen: ``train``, and ``eval`` with evaluation datasets;
    and the coordinator's own computations of the same compile, frozen for the plan cache (or why not)."""
    import tensorflow_federated as tff

    from tffprod.training import coordinator
    from tffprod.training.process import build_evaluation_process
    from tffprod.training.trainer import training_process

    process = training_process(plan)
    form = tff.backends.native.compile_to_mergeable_comp_form(process.next)
    try:
        coordinator_block = coordinator.freeze(coordinator.from_process(process, form))
    except coordinator.NotFreezable as e:
        coordinator_block = {"format": coordinator.FORMAT, "unavailable": str(e)}
    evaluation = build_evaluation_process(plan.task, fmt=plan.fmt) if plan.eval_datasets else None
    states = _initial_states(*[p for p in (process, evaluation) if p is not None])
    moving = list(get_mechanism(plan.spec.dp.mechanism).moving_state)
    computations = [freeze("train", form.up_to_merge, states[0], FREE_TRAIN_STATE + moving, _train_bound(plan),
                            fallback_free=FREE_TRAIN_STATE + ["aggregator"] if moving else None)]
    if evaluation is not None:
        computations.append(freeze("eval", tff.backends.native.compile_to_mergeable_comp_form(
            evaluation.next).up_to_merge, states[1], FREE_EVAL_STATE))
    return computations, coordinator_block


def make_eval_plan(registry: RegistryStore, model_ref: str, dataset_refs: list[str], *,
                   eval_noise_multiplier: Optional[float] = None, eval_bound: Optional[float] = None,
                   delta: Optional[float] = None) -> dict[str, Any]:
    """An evaluation plan: model version ``model_ref`` evaluated on ``dataset_refs`` at their sites.

    Sites approve it like a training plan (``tffprod site approve``); each of its datasets is then
    evaluated once (``tffprod eval REF --plan PLAN``). With ``eval_noise_multiplier`` each site noises
    the metric sums it releases (each example adds at most ``eval_bound`` to each, default
    ``EVAL_BOUND``) and charges the release's epsilon at ``delta`` to the dataset's budget; without
    it the metrics leave un-noised, which a site refuses for a dataset with a budget.

    Raises:
        SpecError: the noise terms are out of range.
        AccessDeniedError: a dataset's site may not receive the version.
        SessionError: the datasets mix formats.
    """
    import tensorflow_federated as tff

    from tffprod.models.access import require_access
    from tffprod.training.process import build_evaluation_process
    from tffprod.sessions.planning import resolve_datasets
    from tffprod.task import load_task

    version = registry.get_model_version(model_ref)
    spec = registry.get_session(version["session_id"])["spec"]
    task = load_task(spec["task"])
    rows = resolve_datasets(registry, list(dataset_refs), task)
    for site in dict.fromkeys(row["site"] for row in rows):
        require_access(registry, version, site)
    formats = sorted({row["format"] for row in rows})
    if len(formats) != 1:
        raise SessionError(f"datasets evaluated together must share a format, these mix {', '.join(formats)}")
    evaluation = build_evaluation_process(task, fmt=formats[0])
    (state,) = _initial_states(evaluation)
    entry = freeze("eval", tff.backends.native.compile_to_mergeable_comp_form(evaluation.next).up_to_merge,
                    state, FREE_EVAL_STATE)
    return single_release_plan(
        registry, entry, rows, name=f"eval-{version['name']}-{version['version']}", federation=spec.get("federation"),
        task=task.summary(), unit="none (evaluation metrics are not noised)",
        privacy=_evaluation_terms(eval_noise_multiplier, eval_bound, delta),
        model={"name": version["name"], "version": int(version["version"])})


def _evaluation_terms(noise_multiplier: Optional[float], bound: Optional[float],
                      delta: Optional[float]) -> Optional[dict[str, Any]]:
    """An evaluation plan's privacy terms when its metric sums are noised at the sites, else None."""
    if noise_multiplier is None:
        if bound is not None or delta is not None:
            raise SpecError("an evaluation bound or delta applies only with an evaluation noise multiplier")
        return None
    from tffprod.privacy.accounting import epsilon_for
    from tffprod.privacy.config import EVAL_BOUND

    bound = EVAL_BOUND if bound is None else bound
    delta = 1e-5 if delta is None else delta
    for label, value, ok in (("evaluation noise multiplier", noise_multiplier, 0 < noise_multiplier < math.inf),
                             ("evaluation bound", bound, 0 < bound < math.inf), ("delta", delta, 0 < delta < 1)):
        if not ok:
            raise SpecError(f"{label} out of range: {value!r}")
    return {"mechanism": "none", "unit": "one example (evaluation metric sums noised at each site)",
            "delta": float(delta),
            "evaluation": {"noise_multiplier": float(noise_multiplier), "bound": float(bound),
                           "epsilon": epsilon_for(noise_multiplier=float(noise_multiplier), rounds=1,
                                                  delta=float(delta))}}


def single_release_plan(registry: RegistryStore, entry: dict[str, Any], rows: list, *, name: str, federation: Any,
                         task: dict[str, Any], unit: str, privacy: Optional[dict[str, Any]] = None,
                         **extra: Any) -> dict[str, Any]:
    """A plan of one ``eval`` or ``compute`` computation (``entry``) on ``rows``, each dataset released
    once; no rounds; no DP unless ``privacy`` (an evaluation plan's noise terms) says otherwise."""
    from tffprod.sites.admin import local_versions

    sites = list(dict.fromkeys(row["site"] for row in rows))
    body = {
        "format": PLAN_FORMAT,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": local_versions(),
        "session": {"name": name, "rounds": 0, "seed": 0, "min_sites": 1, "federation": federation},
        **extra,
        "task": task,
        "privacy": privacy or {"mechanism": "none", "unit": unit},
        "datasets": [{"role": entry["role"], "ref": row["ref"], "site": row["site"], "name": row["name"],
                      "content_hash": row["content_hash"], "num_examples": int(row["num_examples"]),
                      "client_id": row.get("client_id")} for row in rows],
        "coordinators": coordinator_identities(registry, sites),
        "computations": [entry],
    }
    return {**body, "plan_id": canonical_id(body)}


def check_whole_plan_fits(plan: SessionPlan) -> None:
    """Refuses a sampling plan that the budgets cannot hold whole.

    A site charges a plan that samples all its approved rounds at its first release
    (:func:`tffprod.executors.ledger.charged_rounds`), so such a plan cut short by
    ``on_budget = "stop"`` would be refused by every budgeted site at round 1.
    """
    from tffprod.privacy.terms import samples

    if samples(plan.population.accounting()) and plan.budget.limited and plan.budget.max_rounds < plan.spec.rounds:
        tightest = min(plan.budget.remaining, key=plan.budget.remaining.__getitem__)
        raise PrivacyBudgetError(
            f"the plan samples clients or sites, so each site charges all {plan.spec.rounds} rounds at its first "
            f"release, and dataset {tightest}'s remaining budget holds {plan.budget.max_rounds}; plan "
            f"{plan.budget.max_rounds} round(s) or raise the budget")


def coordinator_identities(registry: RegistryStore, sites: list[str]) -> dict[str, str]:
    """Site -> the identity (certificate CN) this coordinator uses there, for sites it connects to."""
    from tffprod.security.certs import identity_of

    identities = {}
    for site in sites:
        try:
            cert = (registry.get_site(site).get("info") or {}).get("cert")
        except NotFoundError:  # a site known only by its datasets (local backend)
            cert = None
        if cert and Path(cert).is_file():
            identities[site] = identity_of(Path(cert).read_bytes())
    return identities


def write_plan(document: Mapping[str, Any], out: os.PathLike | str) -> Path:
    """Write a plan document atomically; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


@dataclasses.dataclass(frozen=True)
class FrozenComputations:
    """A plan's site computations, ready to invoke on contexts without a compiler, and the plan; with
    ``coordinator``, the coordinator's own computations from the plan cache
    (:class:`tffprod.training.coordinator.CoordinatorComputations`; None: the trainer builds them)."""

    plan_id: str
    train: Any
    eval: Any = None
    plan: Any = None
    compute: Any = None
    coordinator: Any = None

    def role_of(self, computation: Any) -> str:
        """The plan's role for one of its computations (``train``, ``eval`` or ``compute``)."""
        for role in ("train", "eval", "compute"):
            if getattr(self, role) is computation:
                return role
        raise ValueError("not a computation of this plan")


def thaw(plan: Plan) -> FrozenComputations:
    """Deserialize a verified plan's computations (imports TFF)."""
    import tensorflow_federated as tff

    from tffprod.protocol.protos import computation_pb2

    def load(role: str) -> Any:
        data = plan.computation_bytes(role)
        if data is None:
            return None
        return tff.framework.deserialize_computation(computation_pb2.Computation.FromString(data))

    return FrozenComputations(plan.plan_id, load("train"), load("eval"), plan, load("compute"))


def check_datasets(plan: Plan, session: SessionPlan) -> None:
    """Refuse to run a plan whose datasets are not exactly the session's, with the same content.

    Raises:
        SessionError: naming the first dataset that differs.
    """
    ours = {(role, row["site"], row["name"]): row["content_hash"]
            for role, rows in (("train", session.datasets), ("eval", session.eval_datasets)) for row in rows}
    theirs = {(d["role"], d["site"], d["name"]): d["content_hash"] for d in plan.datasets}
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            role, site, name = key
            raise SessionError(f"plan {plan.plan_id[:16]} does not match {role} dataset {site}/{name} as registered "
                               "now; make a new plan with 'tffprod session plan'")
