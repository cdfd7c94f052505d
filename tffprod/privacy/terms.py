"""A plan's privacy terms as both sides read them: the epsilon a plan has spent, and whether it samples.

One rule for the coordinator (planning, ``privacy report``) and the site (its ledger), so the two
can never disagree about what a round costs. TF-free; ``dp_accounting`` is imported on first use.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Optional

__all__ = ["plan_epsilon", "samples"]


@functools.lru_cache(maxsize=1024)
def _epsilon(noise_multiplier: float, rounds: int, delta: float, sampling_rate: float,
             fixed_sample: Optional[tuple[int, int]]) -> float:
    from tffprod.privacy.accounting import epsilon_for  # dp_accounting: seconds to import

    if fixed_sample is not None:
        return epsilon_for(noise_multiplier=noise_multiplier, rounds=rounds, delta=delta, fixed_sample=fixed_sample)
    return epsilon_for(noise_multiplier=noise_multiplier, rounds=rounds, delta=delta, sampling_rate=sampling_rate)


def plan_epsilon(privacy: Mapping[str, Any], rounds: int) -> tuple[float, float]:
    """``(epsilon, delta)`` a plan has spent after ``rounds`` rounds; ``(inf, 0)`` without DP.

    The round's sampling is the plan's: Poisson at ``sampling_rate``, or ``fixed_sample``
    ``[N, k]`` (k of N clients without replacement), as the coordinator accounts it.
    """
    if rounds <= 0:
        return 0.0, 0.0
    if privacy.get("mechanism", "none") == "none":
        return math.inf, 0.0
    delta = float(privacy["delta"])
    fixed = privacy.get("fixed_sample")
    return _epsilon(float(privacy["noise_multiplier"]), rounds, delta, float(privacy.get("sampling_rate", 1.0)),
                    tuple(int(v) for v in fixed) if fixed else None), delta


def samples(privacy: Mapping[str, Any]) -> bool:
    """Whether a round draws a sample: Poisson at ``sampling_rate`` < 1, or ``fixed_sample`` k of N with k < N."""
    fixed = privacy.get("fixed_sample")
    return int(fixed[1]) < int(fixed[0]) if fixed else float(privacy.get("sampling_rate", 1.0)) < 1.0
