"""The Gaussian mechanisms: DP-FedAvg with a fixed clip, or with a clip that tracks a quantile.

Both are TFF's ``DifferentiallyPrivateFactory`` (unweighted: each client's update is clipped to the
L2 norm ``clip`` and Gaussian noise of stddev ``noise_multiplier * clip`` is added to the sum). With a
fixed clip the noise may be added at the sites instead (``noise_placement``, see
:mod:`tffprod.privacy.placement`): the coordinator's factory then only clips and averages.
"""

from __future__ import annotations

from typing import Any, Optional

from tffprod.errors import SpecError
from tffprod.privacy.mechanisms.base import DPSettings, Mechanism
from tffprod.privacy.placement import AT_SITES

__all__ = ["GaussianAdaptive", "GaussianFixed"]

_COMMON = ("noise_multiplier", "clip", "delta", "on_budget", "eval_noise_multiplier", "eval_bound")
_REQUIRED = ("noise_multiplier", "clip", "delta")


def _float(dp: DPSettings, key: str) -> float:
    value = getattr(dp, key)
    if value is None:  # DPConfig sets every required key and every default
        raise SpecError(f"missing required key 'dp.{key}' for mechanism {dp.mechanism!r}")
    return float(value)


class GaussianFixed(Mechanism):
    """``gaussian_fixed``: a fixed clip, so a site can check each release against it, and add the
    noise itself."""

    name = "gaussian_fixed"
    keys = (*_COMMON, "noise_placement", "secure_aggregation")
    required = _REQUIRED
    defaults = {"noise_placement": "coordinator", "secure_aggregation": False}

    def aggregator(self, dp: DPSettings, *, clients_per_round: int) -> Any:
        import tensorflow_federated as tff

        at_sites = dp.noise_placement in AT_SITES  # the sites' releases arrive noised
        return tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
            noise_multiplier=0.0 if at_sites else _float(dp, "noise_multiplier"),
            clients_per_round=float(clients_per_round),
            clip=_float(dp, "clip"),
        )

    def release_bound(self, dp: DPSettings) -> Optional[float]:
        return _float(dp, "clip")


class GaussianAdaptive(Mechanism):
    """``gaussian_adaptive``: the clip starts at ``clip`` and moves each round towards the
    ``target_quantile`` of update norms (Andrew et al. 2021), at ``learning_rate``."""

    name = "gaussian_adaptive"
    keys = ("noise_multiplier", "clip", "target_quantile", "learning_rate", "delta", "on_budget",
            "eval_noise_multiplier", "eval_bound")
    required = _REQUIRED
    defaults = {"target_quantile": 0.5, "learning_rate": 0.2}
    # TFF's quantile estimator moves the clip at the coordinator every round: that estimate and the
    # clip derived from it are free; the target quantile, learning rate and noise multipliers are pinned.
    moving_state = ("aggregator/query_state/numerator_state/sum_state",
                    "aggregator/query_state/numerator_state/quantile_estimator_state/current_estimate")

    def check_clients(self, dp: DPSettings, clients_per_round: float, counted: str) -> None:
        z = dp.noise_multiplier
        if z and z >= 0.1 * clients_per_round:
            raise SpecError(
                f"'dp.noise_multiplier' = {z} is too large for gaussian_adaptive with {clients_per_round:g} "
                f"{counted}: TFF's adaptive clipping also noises the clipped-count estimate (stddev 0.05 * "
                f"clients per round) and needs noise_multiplier < 0.1 * clients per round = "
                f"{0.1 * clients_per_round:g}; add clients, lower the noise or use gaussian_fixed")

    def aggregator(self, dp: DPSettings, *, clients_per_round: int) -> Any:
        import tensorflow_federated as tff

        return tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
            noise_multiplier=_float(dp, "noise_multiplier"),
            clients_per_round=float(clients_per_round),
            initial_l2_norm_clip=_float(dp, "clip"),
            target_unclipped_quantile=_float(dp, "target_quantile"),
            learning_rate=_float(dp, "learning_rate"),
        )
