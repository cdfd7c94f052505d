"""Custom federated computations over registered datasets.

``run_federated`` runs any TFF computation whose CLIENTS-placed argument is
dataset references (one string per client) across the sites that hold them,
the way training runs: each site's part (``up_to_merge``) at that site under a
deadline with bounded retries, then the merge and the rest (``after_merge``) at
the coordinator (``tffprod.training.router``). Through the remote backend every call
passes the site's gateway, which checks the references and audits the call.

Only results placed at SERVER may leave: a computation whose result holds a
CLIENTS-placed value would hand per-client values to the coordinator and is
refused before anything runs.

Example:
    >>> from tffprod.examples import digits, stats
    >>> hist = stats.label_histogram(digits.SCHEMA, "tfrecord", digits.NUM_CLASSES)
    >>> result = run_federated(hist, ["hospital-a/train", "hospital-b/train"],
    ...                        registry=registry, backend=create_backend("local"))
    >>> result.value  # [n_0, ..., n_9] over both datasets
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from tffprod.backends.base import Backend, SiteTarget
from tffprod.data.files import content_hash
from tffprod.errors import DatasetError, SessionError, SpecError
from tffprod.protocol.plan_document import load_plan
from tffprod.sessions.approval import freeze, single_release_plan, thaw
from tffprod.training.trainer import check_signature

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore

@dataclasses.dataclass
class FederatedResult:
    """The coordinator's result of a federated computation and who took part.

    Attributes:
        value: the result, as plain Python / lists where it converts (``plain_metrics``), else as TFF returned it.
        sites: one dict per site: ``site``, ``status`` (ok | timeout | error), ``duration_s``,
            ``clients``, ``examples`` (registered count, 0 unless ok), ``error``, ``attempts``.
        duration_s: wall time of the run, opening the backend included.
    """

    value: Any
    sites: list[dict[str, Any]]
    duration_s: float


def _is_client_refs(t: Any) -> bool:
    import numpy as np
    import tensorflow_federated as tff

    return (isinstance(t, tff.FederatedType) and t.placement is tff.CLIENTS and not t.all_equal
            and t.member == tff.TensorType(np.str_))


def check_computation(comp: Any, *, with_server_arg: bool) -> None:
    """Refuse a computation ``run_federated`` cannot run safely.

    Raises:
        SpecError: ``comp`` is not a TFF computation; its parameter is not ``{str}@CLIENTS`` (or, with a
            server argument, ``<value@SERVER, {str}@CLIENTS>``); or its result holds CLIENTS-placed values.
    """
    import tensorflow_federated as tff

    signature = getattr(comp, "type_signature", None)
    if not isinstance(signature, tff.FunctionType):
        raise SpecError(f"expected a tff.Computation, got {type(comp).__name__}")
    param = signature.parameter
    expected = "tff.FederatedType(np.str_, tff.CLIENTS)"
    if with_server_arg:
        elements = list(param) if isinstance(param, tff.StructType) else []
        if len(elements) != 2 or not _is_client_refs(elements[1]):
            raise SpecError(f"with server_arg the computation's parameter must be (value@SERVER, {expected}), "
                            f"not {param}")
        if not (isinstance(elements[0], tff.FederatedType) and elements[0].placement is tff.SERVER):
            raise SpecError(f"server_arg must be SERVER-placed; the computation's parameter is {param}")
    elif not _is_client_refs(param):
        hint = ""
        if isinstance(param, tff.StructType):
            hint = " (pass server_arg for a (value@SERVER, references) parameter)"
        raise SpecError(f"the computation's parameter must be {expected}, one dataset reference per client, "
                        f"not {param}{hint}")
    clients_placed = lambda t: isinstance(t, tff.FederatedType) and t.placement is tff.CLIENTS  # noqa: E731
    if tff.types.contains(signature.result, clients_placed):
        raise SpecError(f"the computation's result {signature.result} holds CLIENTS-placed values: it would "
                        "release per-client values; aggregate them to SERVER (e.g. tff.federated_sum)")


def resolve(registry: RegistryStore, refs: Sequence[str]) -> list[Mapping[str, Any]]:
    """The registry rows of ``refs``; a local file must still hold what was registered.

    Raises:
        NotFoundError: an unknown dataset.
        DatasetError: a local file is missing or changed since it was registered.
        SpecError: no datasets, or one named twice.
    """
    if not refs:
        raise SpecError("run_federated needs at least one dataset")
    rows: list[Mapping[str, Any]] = [registry.get_dataset(ref) for ref in refs]
    seen: set[str] = set()
    for row in rows:
        if row["ref"] in seen:
            raise SpecError(f"dataset {row['ref']} is named twice; each dataset is one client")
        seen.add(row["ref"])
        if row["path"].startswith("site://"):  # checked by its site against the registered hash
            continue
        path = Path(row["path"])
        if not path.is_file():
            raise DatasetError(f"dataset {row['ref']}: file {path} is missing")
        if content_hash(path) != row["content_hash"]:
            raise DatasetError(f"dataset {row['ref']}: {path} changed since it was registered; register it again")
    return rows


def run_federated(comp: Any, datasets: Sequence[str], *, registry: RegistryStore, backend: Backend,
                  server_arg: Any = None, timeout_s: float = 600.0, min_sites: int = 1,
                  plan: Any = None) -> FederatedResult:
    """Run ``comp`` over registered datasets, each site's part at that site.

    Args:
        comp: a ``tff.Computation`` whose parameter is ``tff.FederatedType(np.str_, tff.CLIENTS)``,
            or ``(value@SERVER, references@CLIENTS)`` together with ``server_arg``; its result must
            be SERVER-placed. Its aggregations must not depend on one another
            (``tff.backends.native.compile_to_mergeable_comp_form``).
        datasets: dataset references (``SITE/NAME[:VERSION]``), one client each.
        registry: the registry that knows the datasets.
        backend: a backend that is not open yet; opened for the datasets' sites and closed at the end.
        server_arg: the SERVER-placed part of the argument, when the parameter has one.
        timeout_s: deadline for every site's part.
        min_sites: how many sites must succeed.
        plan: the path of a plan of this computation on these datasets
            (:func:`tffprod.sessions.analytics.make_computation_plan`), approved at their sites: needed at sites
            that require approval, which then release its per-site part (with the plan's
            ``server_arg``).

    Returns:
        A ``FederatedResult``.

    Raises:
        SpecError: the computation or the arguments are unfit (checked before anything runs).
        NotFoundError, DatasetError: a dataset is unknown, or its file missing or changed.
        SessionError: fewer than ``min_sites`` sites succeeded, or the plan is not of this
            computation on these datasets.
        PlanError: the plan does not verify.
    """
    import tensorflow_federated as tff

    from tffprod.training.metrics import plain_metrics
    from tffprod.training.router import RoundRouter

    started = time.monotonic()
    has_server_arg = server_arg is not None
    check_computation(comp, with_server_arg=has_server_arg)
    if timeout_s <= 0:
        raise SpecError(f"timeout_s must be positive, got {timeout_s}")
    rows = resolve(registry, list(datasets))
    by_site: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_site.setdefault(row["site"], []).append(row)
    if not 1 <= min_sites <= len(by_site):
        raise SpecError(f"min_sites is {min_sites} but the datasets span {len(by_site)} site(s)")
    try:
        form = tff.backends.native.compile_to_mergeable_comp_form(comp)
    except (ValueError, TypeError) as e:
        raise SpecError(f"the computation cannot be split into per-site and coordinator parts: {e}") from e
    frozen = None if plan is None else _computation_plan(plan, form, rows)
    try:
        backend.open([SiteTarget(site, tuple(site_rows)) for site, site_rows in by_site.items()], frozen=frozen)
        # Under a plan, datasets are named as at their sites: references come from the opened backend.
        refs_by_site = {site: [backend.reference(row) for row in site_rows] for site, site_rows in by_site.items()}
        router = RoundRouter(backend, form, timeout_s=timeout_s, min_sites=min_sites,
                             site_computation=None if frozen is None else frozen.compute)
        outcome = router.run_round(server_arg, refs_by_site)
    finally:
        backend.close()
    examples = {site: sum(int(row["num_examples"]) for row in site_rows) for site, site_rows in by_site.items()}
    sites = []
    for site in outcome.sites:
        record = site.to_dict()
        record["examples"] = examples[site.site] if site.status == "ok" else 0
        sites.append(record)
    plain = plain_metrics(outcome.output)
    return FederatedResult(value=outcome.output if plain is None else plain, sites=sites,
                           duration_s=time.monotonic() - started)


def _computation_plan(path: Any, form: Any, rows: Sequence[Mapping[str, Any]]) -> Any:
    """The frozen computations of a computation plan of ``form`` on exactly ``rows``."""

    plan = load_plan(path)
    if not plan.computation_only:
        raise SessionError(f"plan {plan.plan_id[:16]} is not a computation plan; make one with make_computation_plan")
    ours = sorted((row["site"], row["name"], row["content_hash"]) for row in rows)
    if sorted((d["site"], d["name"], d["content_hash"]) for d in plan.datasets) != ours:
        raise SessionError(f"plan {plan.plan_id[:16]} computes on other datasets (or other versions of them) than "
                           "these; make a new one")
    frozen = thaw(plan)
    check_signature("compute", frozen.compute, form.up_to_merge, plan.plan_id)
    return frozen


def make_computation_plan(comp: Any, datasets: list[str], *, registry: RegistryStore,
                          server_arg: Any = None) -> dict[str, Any]:
    """A plan of one custom federated computation on registered datasets (see
    :func:`tffprod.sessions.analytics.run_federated`): its per-site part, with ``server_arg`` (if the
    computation takes one) pinned by the plan. Sites approve it like any plan; each dataset is then
    released once (an identical run again is a repeat).

    Raises:
        SpecError: the computation or the datasets are unfit (as for ``run_federated``).
    """
    import tensorflow_federated as tff

    check_computation(comp, with_server_arg=server_arg is not None)
    rows = resolve(registry, list(datasets))
    try:
        form = tff.backends.native.compile_to_mergeable_comp_form(comp)
    except (ValueError, TypeError) as e:
        raise SpecError(f"the computation cannot be split into per-site and coordinator parts: {e}") from e
    entry = freeze("compute", form.up_to_merge, server_arg, [])
    return single_release_plan(registry, entry, rows, name="compute", federation=None,
                                task={"computation": str(comp.type_signature)},
                                unit="none (the computation's results are not noised)")
