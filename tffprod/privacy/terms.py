"""A plan's privacy terms as both sides read them: the epsilon a plan has spent, and whether it samples.

One rule for the coordinator (planning, ``privacy report``) and the site (its ledger), so the two
can never disagree about what a round costs. TF-free; ``dp_accounting`` is imported on first use.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable, Mapping, Optional

from tffprod.privacy.placement import model_noise_multiplier, release_noise_multiplier

__all__ = ["evaluation_charges", "evaluation_epsilon", "evaluation_line", "placement_line", "plan_epsilon",
           "release_epsilon", "samples"]


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
    return _epsilon(model_noise_multiplier(privacy), rounds, delta, float(privacy.get("sampling_rate", 1.0)),
                    tuple(int(v) for v in fixed) if fixed else None), delta


def release_epsilon(privacy: Mapping[str, Any], rounds: int) -> tuple[float, float]:
    """``(epsilon, delta)`` of one site's ``rounds`` releases as the coordinator sees them: ``(inf, 0)``
    when the site adds no noise; else its releases' Gaussian composed without sampling (the coordinator
    chooses whom a release reads). :mod:`tffprod.privacy.placement` has the noise of each placement."""
    if rounds <= 0:
        return 0.0, 0.0
    z = release_noise_multiplier(privacy) if privacy.get("mechanism", "none") != "none" else None
    if not z:
        return math.inf, 0.0
    delta = float(privacy["delta"])
    return _epsilon(z, rounds, delta, 1.0, None), delta


def samples(privacy: Mapping[str, Any]) -> bool:
    """Whether a round draws a sample: Poisson at ``sampling_rate`` < 1, or ``fixed_sample`` k of N with k < N."""
    fixed = privacy.get("fixed_sample")
    return int(fixed[1]) < int(fixed[0]) if fixed else float(privacy.get("sampling_rate", 1.0)) < 1.0


def placement_line(privacy: Mapping[str, Any], rounds: int) -> str:
    """Where a DP plan adds its noise and what one site's releases then give the coordinator, in words."""
    placement = privacy.get("noise_placement", "coordinator")
    if placement == "coordinator":
        return ("noise added by the coordinator: each site's release leaves un-noised "
                "(private only in the published model)")
    epsilon, delta = release_epsilon(privacy, rounds)
    if isinstance(privacy.get("secure_aggregation"), Mapping):
        return (f"noise added at the sites (discrete Gaussian shares for at least {privacy.get('noise_sites', 1)} "
                f"site(s)) under secure aggregation: the coordinator learns only the sum of the releases; against "
                f"it the {rounds} round(s) give epsilon {epsilon:.4g} at delta {delta:g}")
    share = f"a share for at least {privacy.get('noise_sites', 1)} site(s)" if placement == "distributed" else \
        "the full noise at each site"
    return (f"noise added at the sites ({placement}: {share}); against the coordinator a site's {rounds} "
            f"release(s) give epsilon {epsilon:.4g} at delta {delta:g}")


def evaluation_epsilon(privacy: Mapping[str, Any]) -> tuple[float, float]:
    """``(epsilon, delta)`` of one evaluation release of a dataset: the plan's Gaussian at its evaluation
    noise multiplier, once; ``(inf, 0)`` when evaluation metrics leave un-noised."""
    evaluation = privacy.get("evaluation")
    if not isinstance(evaluation, Mapping):
        return math.inf, 0.0
    delta = float(privacy["delta"])
    return _epsilon(float(evaluation["noise_multiplier"]), 1, delta, 1.0, None), delta


def evaluation_charges(privacy: Mapping[str, Any], datasets: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What a plan's evaluation costs each of ``datasets`` (rows with ``site`` and ``name``): one noised
    release each (registry ``record_evaluation_spend`` items); none when its metrics leave un-noised.
    Every dataset asked is charged, answered or not: a lost answer may still have been released."""
    if not isinstance(privacy.get("evaluation"), Mapping):
        return []
    epsilon, delta = evaluation_epsilon(privacy)
    noise = float(privacy["evaluation"]["noise_multiplier"])
    return [{"site": row["site"], "name": row["name"], "epsilon": epsilon, "delta": delta, "releases": 1,
             "noise_multiplier": noise} for row in datasets]


def evaluation_line(privacy: Mapping[str, Any]) -> str:
    """How a plan's evaluation releases leave its sites, in words."""
    evaluation = privacy.get("evaluation")
    if not isinstance(evaluation, Mapping):
        return "evaluation metrics leave un-noised (a site refuses that for a dataset with a budget)"
    epsilon, delta = evaluation_epsilon(privacy)
    return (f"evaluation metrics noised at each site (multiplier {float(evaluation['noise_multiplier']):g}, at most "
            f"{float(evaluation['bound']):g} per example in each sum): epsilon {epsilon:.4g} at delta {delta:g} per "
            "evaluation dataset, charged to its budget")
