"""The backend plug-point: where each site's part of a round runs.

A backend gives the round router two things: a context per site that runs the
per-site part (``up_to_merge``) next to that site's data, and a coordinator
context that merges partial results and finishes the round (DP noise, server
optimizer). The router never knows which backend it has.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class SiteTarget:
    """A site a session uses, and the datasets (registry rows) it reads there."""

    name: str
    datasets: tuple[Mapping[str, Any], ...]


def catalog_reference(dataset: Mapping[str, Any]) -> str:
    """How a release names a dataset at its site: the catalog name, or ``NAME#INDEX`` for one
    client of a dataset with a client-id column."""
    index = dataset.get("client_index")
    return dataset["name"] if index is None else f"{dataset['name']}#{int(index)}"


class Backend(abc.ABC):
    """Runs TFF computations at sites and at the coordinator.

    ``open`` connects (or starts) what a session needs, ``close`` (or leaving a ``with`` block)
    releases it, ending every process it started. Implementations fill ``_contexts`` (site
    name -> context) and ``_coordinator`` in ``_open``.
    """

    name: str = "abstract"

    def __init__(self) -> None:
        self._contexts: dict[str, Any] = {}
        self._coordinator: Any = None
        # Set by ``open``: an approved plan's ``FrozenComputations``, whose computations the sites
        # then run as given (the remote backend asks sites for releases of the plan), without
        # TFF's compiler; the coordinator context always compiles.
        self.frozen: Any = None
        # Set by ``open``: the federation a session belongs to; remote calls name it.
        self.federation: str | None = None

    @property
    def site_compiler(self) -> Any:
        """The ``compiler_fn`` of site contexts: None for frozen computations."""
        return None if self.frozen is not None else "default"

    def open(self, sites: list[SiteTarget], *, frozen: Any = None, federation: str | None = None) -> None:
        """Prepare a context for each site and the coordinator.

        Args:
            sites: the sites a session uses, with their datasets.
            frozen: an approved plan's ``FrozenComputations``: the sites run only its computations.
            federation: the session's federation; calls to sites name it.
        """
        self.frozen, self.federation = frozen, federation
        self._open(sites)

    @abc.abstractmethod
    def _open(self, sites: list[SiteTarget]) -> None:
        """Connect to (or start) what ``sites`` need, and the coordinator's context."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release channels and stop every process this backend started."""

    def site_context(self, site: str) -> Any:
        """The synchronous TFF context that runs computations at ``site``."""
        return self._contexts[site]

    def run_site(self, site: str, computation: Any, state: Any, refs: list[str], *, round_num: int = 0,
                 secagg: Any = None) -> Any:
        """Run ``computation`` (a site computation) at ``site`` on ``<state, refs>`` (``refs`` alone when
        ``state`` is None), as round ``round_num`` (0: not a training round); its partial result.

        Under a plan (``frozen``) the site is asked for a release of the plan
        (:mod:`tffprod.backends.release`, through ``release_sender``); otherwise the site's context
        runs the computation. With ``secagg`` (the round's ``SecAggInput``) the answer is the site's
        masked vector (:mod:`tffprod.backends.secure_round`).
        """
        if self.frozen is not None:
            from tffprod.backends.release import ReleaseClient

            return ReleaseClient(self.frozen.plan, self.release_sender(site)).release(
                self.frozen.role_of(computation), round_num, state, list(refs), computation.type_signature.result,
                secagg=secagg)
        import numpy as np
        import tensorflow_federated as tff

        parameter = computation.type_signature.parameter
        data_type = parameter[1] if state is not None else parameter
        data: Any = refs
        if isinstance(data_type.member, tff.TensorType) and len(data_type.member.shape) == 1:
            data = [np.array(refs, dtype=object)]  # one client holding every reference (str[?]@CLIENTS)
        arg = tff.structure.Struct.unnamed(state, data) if state is not None else data
        return self.site_context(site).invoke(computation, arg)

    def release_sender(self, site: str) -> Any:
        """Sends a ``ReleaseRequest`` to ``site`` and returns its ``ReleaseResponse`` (under a plan)."""
        raise NotImplementedError(f"the {self.name} backend cannot ask sites for releases")

    def secagg_sender(self, site: str) -> Any:
        """Sends a secure aggregation step to ``site``: ``(step, request) -> response`` (under a plan)."""
        raise NotImplementedError(f"the {self.name} backend has no secure aggregation")

    def reconnect(self, site: str) -> None:
        """Replace ``site``'s context after it was unavailable (a no-op where contexts never go stale)."""
        return None

    def coordinator_context(self) -> Any:
        """The synchronous TFF context at the coordinator."""
        if self._coordinator is None:
            raise RuntimeError("backend is not open")
        return self._coordinator

    @abc.abstractmethod
    def reference(self, dataset: Mapping[str, Any]) -> str:
        """The string a computation at the dataset's site opens to read it."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
