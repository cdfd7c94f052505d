"""Which clients train each round, and what that means for privacy accounting.

A training dataset is one client (site-level) unless it declares a client-id
column; then it is ``num_clients`` clients (customers, patients), which the
coordinator addresses by index ``0..num_clients-1`` and never by id. A session's
datasets are all site-level or all client-level. Client-level sessions may
sample clients each round across all their datasets and sites (the spec's
``[sampling]`` table): Poisson at rate q, or a fixed number k of the N clients
drawn without replacement. Draws come from a numpy Generator seeded with the
spec's ``seed``, so a session is reproducible. TF-free.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tffprod.errors import SpecError
from tffprod.privacy.config import SamplingConfig

SITE_LEVEL_UNIT = "site dataset (site-level)"
NO_DP_UNIT = "none (no differential privacy)"


def _sample_size(sampling: SamplingConfig) -> int:
    """k of a fixed-size sampling (a SamplingConfig without ``client_rate`` has ``clients_per_round``)."""
    assert sampling.clients_per_round is not None, "SamplingConfig holds exactly one of its two keys"
    return sampling.clients_per_round


@dataclasses.dataclass(frozen=True)
class Population:
    """The clients a session trains on: every client of every training dataset.

    Attributes:
        datasets: the training datasets' registry rows.
        sampling: the spec's ``[sampling]`` table, or None (every client every round).
    """

    datasets: tuple[Mapping[str, Any], ...]
    sampling: Optional[SamplingConfig] = None

    @property
    def client_level(self) -> bool:
        """True when the datasets have client-id columns (DP protects each client)."""
        return any(row.get("client_id") for row in self.datasets)

    @property
    def size(self) -> int:
        """N: clients across all training datasets (one per dataset when site-level)."""
        if not self.client_level:
            return len(self.datasets)
        return sum(int(row["num_clients"]) for row in self.datasets)

    @property
    def unit(self) -> str:
        """The unit of privacy, for people: ``client (column customer_id)`` or site-level."""
        if not self.client_level:
            return SITE_LEVEL_UNIT
        columns = sorted({row["client_id"] for row in self.datasets})
        return f"client (column{'s' if len(columns) > 1 else ''} {', '.join(columns)})"

    @property
    def everyone(self) -> bool:
        """True when every client trains every round."""
        s = self.sampling
        return s is None or (s.client_rate is not None and s.client_rate == 1.0) or \
            (s.client_rate is None and _sample_size(s) >= self.size)

    @property
    def expected_clients_per_round(self) -> float:
        """q * N (Poisson), k (fixed) or N: what TFF's DP aggregator divides the noised sum by."""
        s = self.sampling
        if s is None or self.everyone:
            return float(self.size)
        if s.client_rate is not None:
            return s.client_rate * self.size
        return float(_sample_size(s))

    @property
    def sampling_rate(self) -> float:
        """A client's chance to take part in a round: q, k / N, or 1."""
        s = self.sampling
        if s is None or self.everyone:
            return 1.0
        if s.client_rate is not None:
            return s.client_rate
        return _sample_size(s) / self.size

    def accounting(self) -> dict[str, Any]:
        """Keyword arguments for ``PrivacyLedger.record_round`` / ``epsilon_for``: the round's sampling."""
        s = self.sampling
        if s is None or self.everyone:
            return {"sampling_rate": 1.0}
        if s.client_rate is not None:
            return {"sampling_rate": s.client_rate}
        return {"fixed_sample": (self.size, _sample_size(s))}

    def describe(self) -> dict[str, Any]:
        """What a session and its model version record about its unit of privacy and sampling."""
        s = self.sampling
        if s is None or self.everyone:
            sampling: dict[str, Any] = {"mode": "all", "sampling_rate": 1.0}
        elif s.mode == "poisson":
            sampling = {"mode": "poisson", "client_rate": s.client_rate}
        else:
            sampling = {"mode": "fixed", "clients_per_round": s.clients_per_round,
                        "sampling_rate": self.sampling_rate}
        fixed = "fixed_sample" in self.accounting()
        return {
            "unit": self.unit,
            "level": "client" if self.client_level else "site",
            "clients": self.size,
            "sampling": sampling,
            "neighbouring": "replace one client" if fixed else "add or remove one client",
            "accountants": ["rdp", "pld"] if self.client_level and not fixed else ["rdp"],
        }


def check_population(population: Population, *, what: str = "datasets") -> None:
    """Refuse sessions whose datasets and sampling do not fit together.

    Raises:
        SpecError: client-level and site-level datasets mixed, sampling without client-id
            columns, or a fixed sample larger than the population.
    """
    with_ids = [row["ref"] for row in population.datasets if row.get("client_id")]
    without = [row["ref"] for row in population.datasets if not row.get("client_id")]
    if with_ids and without:
        raise SpecError(
            f"{what} must all have a client-id column or none: {', '.join(with_ids)} have one, "
            f"{', '.join(without)} do not (register them with --client-id, or set client_id at the site)")
    sampling = population.sampling
    if sampling is not None and not with_ids:
        raise SpecError("'[sampling]' needs datasets with a client-id column (register with --client-id, or "
                        "client_id in the site's config); site-level datasets train every round")
    k = sampling.clients_per_round if sampling is not None else None
    if k is not None and k > population.size:
        raise SpecError(f"'sampling.clients_per_round' = {k} exceeds the "
                        f"{population.size} clients of the datasets")


@dataclasses.dataclass(frozen=True)
class Client:
    """One client drawn for a round: its dataset's row and its index there (None: the whole dataset)."""

    dataset: Mapping[str, Any]
    index: Optional[int] = None

    def reference_row(self) -> Mapping[str, Any]:
        """The dataset row a backend turns into a reference (with ``client_index`` when client-level)."""
        return self.dataset if self.index is None else {**self.dataset, "client_index": self.index}


class ClientSampler:
    """Draws each round's clients from a population with a seeded numpy Generator.

    Example::

        sampler = ClientSampler(Population(rows, SamplingConfig(client_rate=0.05)), seed=0)
        clients = sampler.draw()   # [Client(row, index), ...]; may be empty with Poisson sampling
    """

    def __init__(self, population: Population, *, seed: int) -> None:
        self.population = population
        self._rng = np.random.default_rng(seed)
        self._owners: list[tuple[Mapping[str, Any], Optional[int]]] = []
        for row in population.datasets:
            if population.client_level:
                self._owners += [(row, i) for i in range(int(row["num_clients"]))]
            else:
                self._owners.append((row, None))

    def draw(self) -> list[Client]:
        """The next round's clients, in population order."""
        n, sampling = len(self._owners), self.population.sampling
        if sampling is None or self.population.everyone:
            chosen: Sequence[int] = range(n)
        elif sampling.client_rate is not None:
            chosen = np.flatnonzero(self._rng.random(n) < sampling.client_rate).tolist()
        else:
            chosen = sorted(self._rng.choice(n, size=_sample_size(sampling), replace=False).tolist())
        return [Client(*self._owners[i]) for i in chosen]
