"""Privacy budgets at the coordinator: what a session may spend on each dataset.

A budget (epsilon, delta) belongs to a dataset's identity (site and name, across
versions). What earlier sessions spent is added up (basic composition: their
epsilons and deltas sum), and a new session is planned against what remains:
it is refused when its planned epsilon does not fit, or, with
``[dp] on_budget = "stop"``, it is cut to the last round that fits. Planned
epsilons use the same per-round DP events as the session's ledger: Poisson
sampling at rate q, a fixed k of N clients, or every client (q = 1). TF-free.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from tffprod.privacy.accounting import epsilon_for
from tffprod.errors import PrivacyBudgetError
from tffprod.privacy.sampling import Population
from tffprod.sessions.spec import SessionSpec

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """What the budgets allow a session: the remaining epsilon per dataset and the rounds that fit."""

    remaining: dict[str, float]
    max_rounds: int
    planned_epsilon: float | None

    @property
    def limited(self) -> bool:
        return bool(self.remaining)


def rounds_that_fit(*, noise_multiplier: float, delta: float, epsilon: float, rounds: int,
                    sampling_rate: float = 1.0, fixed_sample: Optional[tuple[int, int]] = None) -> int:
    """The most rounds (at most ``rounds``) whose epsilon stays within ``epsilon``.

    ``sampling_rate`` (Poisson) or ``fixed_sample`` (``(population, sample_size)``) say how
    clients are sampled each round, as for :func:`tffprod.privacy.accounting.epsilon_for`.
    """
    if noise_multiplier == 0 or epsilon <= 0:
        return 0
    low, high = 0, rounds  # epsilon grows with rounds: find the last that fits
    while low < high:
        mid = (low + high + 1) // 2
        if epsilon_for(noise_multiplier=noise_multiplier, rounds=mid, delta=delta, sampling_rate=sampling_rate,
                       fixed_sample=fixed_sample) <= epsilon:
            low = mid
        else:
            high = mid - 1
    return low


def plan_budgets(spec: SessionSpec, datasets: Sequence[Mapping[str, Any]], *, registry: RegistryStore,
                 resuming: Optional[str] = None) -> BudgetPlan:
    """Check the session against every training dataset's remaining budget; writes nothing.

    ``resuming`` names a session being resumed: its own spend so far is part of its plan
    (it counts towards ``spec.rounds``), not of the budget's other uses.

    Raises:
        PrivacyBudgetError: a budgeted dataset in a session without DP, a delta that does not
            fit, or a planned epsilon over the remaining budget (unless ``on_budget = "stop"``
            and at least one round fits).
    """
    dp = spec.dp
    remaining: dict[str, float] = {}
    for site, name in dict.fromkeys((row["site"], row["name"]) for row in datasets):
        budget = registry.get_budget(site, name)
        if budget is None:
            continue
        dataset = f"{site}/{name}"
        if not dp.enabled:
            raise PrivacyBudgetError(f"dataset {dataset} has a privacy budget (epsilon {budget['epsilon']:g}); "
                                     "the session must use DP ([dp] mechanism)")
        (report,) = registry.privacy_report(site=site, name=name)
        spent = dict(report["spent"])
        for own in (s for s in report["sessions"] if s["session_id"] == resuming):
            spent = {key: spent[key] - own[key] for key in ("epsilon", "delta")}
        if dp.delta > budget["delta"] - spent["delta"]:
            raise PrivacyBudgetError(f"dataset {dataset}: delta {dp.delta:g} exceeds the remaining "
                                     f"{budget['delta'] - spent['delta']:.3g} (budget {budget['delta']:g})")
        remaining[dataset] = budget["epsilon"] - spent["epsilon"]
    if not remaining:
        return BudgetPlan({}, spec.rounds, None)
    noise_multiplier, delta = spec.model_noise_multiplier, dp.delta
    # A budgeted dataset needs DP (refused above), and an enabled [dp] has both keys (DPConfig checks).
    assert noise_multiplier is not None and delta is not None
    tightest_name = min(remaining, key=remaining.__getitem__)
    tightest = remaining[tightest_name]
    sampling = Population(tuple(datasets), spec.sampling).accounting()
    planned = epsilon_for(noise_multiplier=noise_multiplier, rounds=spec.rounds, delta=delta, **sampling)
    fits = spec.rounds if planned <= tightest else rounds_that_fit(
        noise_multiplier=noise_multiplier, delta=delta, epsilon=tightest, rounds=spec.rounds, **sampling)
    if fits < spec.rounds and (dp.on_budget == "refuse" or fits == 0):
        raise PrivacyBudgetError(
            f"planned epsilon {planned:.4g} over {spec.rounds} rounds exceeds dataset {tightest_name}'s "
            f"remaining budget {tightest:.4g}; {fits} round(s) fit"
            + ("" if fits == 0 else " (set [dp] on_budget = \"stop\" to train that many)")
        )
    return BudgetPlan(remaining, fits, planned)
