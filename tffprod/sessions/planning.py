"""Planning a session: a spec checked against the registry, before anything is written.

``plan_session`` checks everything it can (task, datasets, schemas, files, federation,
sampling, DP settings and budgets) and returns a :class:`SessionPlan`, the validated
session every later stage reads; bad input leaves the registry as it was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from tffprod.backends.base import SiteTarget
from tffprod.sessions.spec import SessionSpec
from tffprod.data.files import content_hash
from tffprod.data.schema import Schema
from tffprod.errors import DatasetError, SpecError
from tffprod.sessions.budgets import BudgetPlan, plan_budgets
from tffprod.privacy.mechanisms import get_mechanism
from tffprod.privacy.sampling import Population, check_population
from tffprod.task import Task, load_task

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore

__all__ = ["SessionPlan", "plan_session", "resolve_datasets"]


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
        """``client (column customer_id)``, ``site dataset (site-level)``, or ``none (no differential
        privacy)`` for a session without DP."""
        from tffprod.privacy.sampling import NO_DP_UNIT

        return self.population.unit if self.spec.dp.enabled else NO_DP_UNIT

    @property
    def training_sites(self) -> list[str]:
        return list(dict.fromkeys(row["site"] for row in self.datasets))


def resolve_datasets(registry: RegistryStore, refs: list[str], task: Task, *,
                     verify_files: bool = True) -> list[Mapping[str, Any]]:
    rows: list[Mapping[str, Any]] = []
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


def plan_session(spec: SessionSpec, *, registry: RegistryStore, verify_files: bool = True,
                 resuming: Optional[str] = None) -> SessionPlan:
    """Validate a spec against the registry; writes nothing. ``resuming`` names the session
    being resumed (its own privacy spend is part of its plan).

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
    if population.client_level:
        get_mechanism(spec.dp.mechanism).check_clients(spec.dp, population.expected_clients_per_round,
                                                       "expected clients per round")
    budget = plan_budgets(spec, datasets, registry=registry, resuming=resuming)
    return SessionPlan(spec, task, tuple(datasets), tuple(eval_datasets), formats[0], budget)


def _check_federation(registry: RegistryStore, federation: str, rows: list[Mapping[str, Any]]) -> None:
    """Refuse datasets at sites outside the session's federation."""
    members = set(registry.get_federation(federation)["sites"])
    for row in rows:
        if row["site"] not in members:
            raise SpecError(f"dataset {row['ref']} is at site {row['site']}, which is not in federation "
                            f"'{federation}' (add it with 'tffprod federation add-site {federation} {row['site']}')")
