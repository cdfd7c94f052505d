"""Where the DP noise is added: at the coordinator, or at the sites before a release leaves.

The ``[dp] noise_placement`` of a ``gaussian_fixed`` session, with ``z`` its ``noise_multiplier``
and ``m`` its ``min_sites`` (the fewest sites whose releases a round sums):

* ``coordinator`` (the default): sites release their un-noised clipped sums and the coordinator
  adds noise ``z * clip`` to their total. The model is DP at ``z``; against the coordinator a
  release is not private at all.
* ``distributed``: each site adds a share of stddev ``z * clip / sqrt(m)`` to its release, so the
  sum of at least ``m`` releases carries at least the planned noise ``z * clip``. The model is DP at
  ``z``; a single release, seen by the coordinator, at ``z / sqrt(m)`` (meant for secure aggregation,
  under which the coordinator sees only the sum).
* ``local``: each site adds ``z * clip`` itself, so each release is DP at ``z`` on its own, whatever
  the other sites do; the sum of at least ``m`` releases carries ``z * sqrt(m)``.

Against the coordinator, sampling does not amplify privacy: the coordinator chooses which clients
a release reads, so a release's epsilon composes its rounds at sampling rate 1.

With ``secure_aggregation`` (distributed only) the shares are discrete Gaussian noise on quantized
releases, and the coordinator sees only the sum: both the model and what the coordinator sees are
accounted at the sum's effective noise multiplier, which the plan states (``secure_aggregation.
noise_multiplier``, the Kairouz-Liu-Steinke bound; equal to z up to float rounding at the plan's
quantization) and each site recomputes before approving.

TF-free; one rule for the coordinator (planning, accounting) and the site (its noise, its ledger).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

__all__ = ["AT_SITES", "PLACEMENTS", "model_noise_multiplier", "release_noise_multiplier", "secure_noise_multiplier",
           "site_stddev"]

PLACEMENTS = ("coordinator", "distributed", "local")
AT_SITES = ("distributed", "local")  # the placements in which a site adds noise itself


def _sites(privacy: Mapping[str, Any]) -> int:
    return max(1, int(privacy.get("noise_sites", 1)))


def secure_noise_multiplier(privacy: Mapping[str, Any]) -> Optional[float]:
    """The effective noise multiplier of a plan with secure aggregation, or None without it."""
    secure = privacy.get("secure_aggregation")
    return float(secure["noise_multiplier"]) if isinstance(secure, Mapping) and "noise_multiplier" in secure else None


def model_noise_multiplier(privacy: Mapping[str, Any]) -> float:
    """The noise multiplier of a round's sum (what the model's epsilon is accounted at).

    ``privacy``: a plan's privacy terms, or any mapping with ``noise_multiplier``,
    ``noise_placement`` (default coordinator) and ``noise_sites`` (m).
    """
    secure = secure_noise_multiplier(privacy)
    if secure is not None:
        return secure
    z = float(privacy["noise_multiplier"])
    return z * math.sqrt(_sites(privacy)) if privacy.get("noise_placement") == "local" else z


def release_noise_multiplier(privacy: Mapping[str, Any]) -> Optional[float]:
    """The noise multiplier of what the coordinator learns from one site's release: the release as
    it leaves the site, or under secure aggregation the sum it is hidden in; None when the site adds none."""
    secure = secure_noise_multiplier(privacy)
    if secure is not None:
        return secure
    placement = privacy.get("noise_placement", "coordinator")
    z = float(privacy["noise_multiplier"])
    if placement == "distributed":
        return z / math.sqrt(_sites(privacy))
    if placement == "local":
        return z
    return None


def site_stddev(privacy: Mapping[str, Any], clip: float) -> Optional[float]:
    """The stddev of the continuous noise a site adds to each coordinate of a release whose clients
    are clipped to ``clip``; None when the site adds none (or discrete noise, under secure aggregation)."""
    if secure_noise_multiplier(privacy) is not None:
        return None
    z = release_noise_multiplier(privacy)
    return None if z is None else z * float(clip)
