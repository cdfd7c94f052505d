"""What a DP mechanism for model updates is, to tffprod: the plug-point's interface.

A mechanism names the ``[dp]`` keys it takes (with defaults), checks what depends on the round's
size, builds TFF's aggregation factory for itself, and tells a plan what a site can enforce: a bound
on each release, and the parts of the aggregator's state the coordinator may move between rounds.
Accounting is dp_accounting's Gaussian (:mod:`tffprod.privacy.accounting`) for every mechanism here.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping, Optional, Protocol

__all__ = ["DPSettings", "Mechanism"]


class DPSettings(Protocol):
    """The ``[dp]`` values a mechanism reads (``tffprod.privacy.config.DPConfig``), read-only."""

    @property
    def mechanism(self) -> str: ...
    @property
    def noise_multiplier(self) -> Optional[float]: ...
    @property
    def clip(self) -> Optional[float]: ...
    @property
    def target_quantile(self) -> Optional[float]: ...
    @property
    def learning_rate(self) -> Optional[float]: ...
    @property
    def delta(self) -> Optional[float]: ...
    @property
    def noise_placement(self) -> Optional[str]: ...
    @property
    def secure_aggregation(self) -> Optional[bool]: ...
    @property
    def eval_noise_multiplier(self) -> Optional[float]: ...


class Mechanism(abc.ABC):
    """One DP mechanism, registered by ``name`` in :data:`tffprod.privacy.mechanisms.MECHANISMS`."""

    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]] = ()  # the [dp] keys it takes besides 'mechanism'
    required: ClassVar[tuple[str, ...]] = ()  # of those, the ones a spec must set
    defaults: ClassVar[Mapping[str, Any]] = {}  # of those, the ones with a default
    # Prefixes of the training computation's aggregator state the coordinator moves between rounds
    # (free in a plan); the rest of the aggregator's state is pinned to the plan's values.
    moving_state: ClassVar[tuple[str, ...]] = ()

    @property
    def private(self) -> bool:
        """Whether the mechanism adds noise (every mechanism but ``none``)."""
        return bool(self.required)

    def check_clients(self, dp: DPSettings, clients_per_round: float, counted: str) -> None:
        """Refuse settings that do not fit ``clients_per_round`` (``counted``: how they are counted,
        e.g. ``"dataset(s) per round"``). The default accepts any."""
        return None

    @abc.abstractmethod
    def aggregator(self, dp: DPSettings, *, clients_per_round: int) -> Any:
        """TFF's aggregation factory for model updates (imports TFF), or None for the weighted mean."""

    def release_bound(self, dp: DPSettings) -> Optional[float]:
        """The L2 norm per client a site checks on a training release (its clipped sum), or None
        when the site cannot check one (no clip, or a clip the coordinator moves)."""
        return None
