"""DP mechanisms by name: the ``[dp] mechanism`` plug-point.

A mechanism is one module here (a :class:`~tffprod.privacy.mechanisms.base.Mechanism`) and one
line in :data:`MECHANISMS`; the spec's ``[dp]`` table, session planning, the trainer and the plans
sites approve all ask the registry, never branch on a mechanism's name.
"""

from __future__ import annotations

from tffprod.errors import SpecError
from tffprod.privacy.mechanisms.base import DPSettings, Mechanism
from tffprod.privacy.mechanisms.gaussian import GaussianAdaptive, GaussianFixed
from tffprod.privacy.mechanisms.none import NoDP

__all__ = ["MECHANISMS", "DPSettings", "Mechanism", "get_mechanism"]

MECHANISMS: dict[str, Mechanism] = {m.name: m for m in (NoDP(), GaussianFixed(), GaussianAdaptive())}


def get_mechanism(name: str) -> Mechanism:
    """The mechanism called ``name``.

    Raises:
        SpecError: no mechanism has that name (the message lists those that do).
    """
    try:
        return MECHANISMS[name]
    except (KeyError, TypeError):
        raise SpecError(f"'dp.mechanism' must be one of {', '.join(map(repr, MECHANISMS))}, got {name!r}") from None
