"""Choosing DP parameters: the noise (or the sampling rate) that meets a target epsilon.

Epsilon falls as the noise multiplier rises and rises with the sampling rate, for a fixed number of
rounds and delta, under the same accountant the session uses (:func:`tffprod.privacy.accounting.epsilon_for`).
So each is found by bisection on that accountant, and the answer is always on the safe side: the noise
returned is never below the exact answer (epsilon at it is <= the target), the sampling rate never above.

TF-free; ``dp_accounting`` is imported on first use (seconds).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from tffprod.errors import SpecError
from tffprod.privacy.accounting import epsilon_for

__all__ = ["Calibration", "noise_for", "sampling_rate_for"]

MAX_NOISE = 1e4  # a noise multiplier beyond this trains nothing useful; no target needs it in practice
RELATIVE_TOLERANCE = 1e-4  # of the parameter found


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A parameter set and the epsilon it gives (at ``delta`` after ``rounds`` rounds)."""

    noise_multiplier: float
    sampling_rate: Optional[float]  # Poisson q; None with a fixed sample
    fixed_sample: Optional[tuple[int, int]]  # (population, sample size)
    rounds: int
    delta: float
    epsilon: float
    accountant: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _epsilon(noise: float, rounds: int, delta: float, *, sampling_rate: float,
             fixed_sample: Optional[tuple[int, int]], accountant: str) -> float:
    try:
        if fixed_sample is not None:
            return epsilon_for(noise_multiplier=noise, rounds=rounds, delta=delta, fixed_sample=fixed_sample,
                               accountant=accountant)
        return epsilon_for(noise_multiplier=noise, rounds=rounds, delta=delta, sampling_rate=sampling_rate,
                           accountant=accountant)
    except ValueError as e:
        raise SpecError(str(e)) from None


def _check_target(epsilon: float, rounds: int) -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not (0 < epsilon < math.inf):
        raise SpecError(f"target epsilon must be a finite number > 0, got {epsilon!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise SpecError(f"rounds must be an integer >= 1, got {rounds!r}")


def noise_for(epsilon: float, *, delta: float, rounds: int, sampling_rate: float = 1.0,
              fixed_sample: Optional[tuple[int, int]] = None, accountant: str = "rdp") -> Calibration:
    """The smallest noise multiplier (within 1e-4 relative) whose epsilon is at most ``epsilon``.

    Raises:
        SpecError: an argument is out of range, or no noise multiplier up to 1e4 meets the target.
    """
    _check_target(epsilon, rounds)

    def eps(noise: float) -> float:
        return _epsilon(noise, rounds, delta, sampling_rate=sampling_rate, fixed_sample=fixed_sample,
                        accountant=accountant)

    high = 1.0
    while eps(high) > epsilon:
        high *= 2
        if high > MAX_NOISE:
            raise SpecError(f"no noise multiplier up to {MAX_NOISE:g} gives epsilon <= {epsilon:g} over {rounds} "
                            "rounds: sample fewer clients per round, run fewer rounds or accept a larger epsilon")
    low = 0.0  # epsilon is infinite without noise
    while high - low > RELATIVE_TOLERANCE * high:
        middle = (low + high) / 2
        if eps(middle) > epsilon:
            low = middle
        else:
            high = middle
    return Calibration(high, None if fixed_sample else float(sampling_rate), fixed_sample, rounds, float(delta),
                       eps(high), accountant)


def sampling_rate_for(epsilon: float, *, delta: float, rounds: int, noise_multiplier: float,
                      accountant: str = "rdp") -> Calibration:
    """The largest Poisson sampling rate q in (0, 1] (within 1e-4 relative) whose epsilon at
    ``noise_multiplier`` is at most ``epsilon``.

    Raises:
        SpecError: an argument is out of range, or even q = 1e-6 exceeds the target.
    """
    _check_target(epsilon, rounds)

    def eps(rate: float) -> float:
        return _epsilon(noise_multiplier, rounds, delta, sampling_rate=rate, fixed_sample=None, accountant=accountant)

    if eps(1.0) <= epsilon:
        return Calibration(float(noise_multiplier), 1.0, None, rounds, float(delta), eps(1.0), accountant)
    low, high = 1e-6, 1.0
    if eps(low) > epsilon:
        raise SpecError(f"noise multiplier {noise_multiplier:g} cannot give epsilon <= {epsilon:g} over {rounds} "
                        "rounds at any sampling rate >= 1e-6: add noise or run fewer rounds")
    while high - low > RELATIVE_TOLERANCE * low:
        middle = (low + high) / 2
        if eps(middle) > epsilon:
            high = middle
        else:
            low = middle
    return Calibration(float(noise_multiplier), low, None, rounds, float(delta), eps(low), accountant)
