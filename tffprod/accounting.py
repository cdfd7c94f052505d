"""Privacy accounting: epsilon of the DP rounds that really ran, via ``dp_accounting``.

tffprod does no DP math of its own: each round is the DP event
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` (just ``GaussianDpEvent(z)`` when
every client takes part, ``q == 1``), and an RDP or PLD accountant from
``dp_accounting`` composes the rounds and reports epsilon for the target delta.

``dp_accounting`` does not import TensorFlow, but it imports SciPy and takes
seconds to load, so it is imported only when an epsilon is computed: importing
this module stays cheap for the CLI.

With a handful of sites that all train every round (``q == 1``), epsilon is
large (z=1.1, 100 rounds, delta=1e-5 gives about 83): report it, don't hide it.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Mapping

ACCOUNTANTS = ("rdp", "pld")


def _check_noise_multiplier(noise_multiplier: Any) -> float:
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)):
        raise ValueError(f"noise_multiplier must be a number, got {noise_multiplier!r}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    return float(noise_multiplier)


def _check_delta(delta: Any) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(f"delta must be a number with 0 < delta < 1, got {delta!r}")
    return float(delta)


def _check_sampling_rate(sampling_rate: Any) -> float:
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float)) or not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling_rate must be a number with 0 < q <= 1, got {sampling_rate!r}")
    return float(sampling_rate)


def _check_accountant(accountant: Any) -> str:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    return accountant


def _epsilon(*, noise_multiplier: float, delta: float, accountant: str,
             rounds_by_rate: list[tuple[tuple[float, Any], int]]) -> float:
    """Epsilon after ``n`` rounds of each ``((q, event), n)`` in ``rounds_by_rate``.

    ``event`` is a ``dp_accounting.DpEvent`` reported by TFF, or None for
    ``GaussianDpEvent(noise_multiplier)``. Composition is commutative, so the
    rounds of one pair are composed as one ``SelfComposedDpEvent``: this gives
    the epsilon of composing them one by one, at the cost of one event per pair.
    """
    rounds_by_rate = [(key, n) for key, n in rounds_by_rate if n > 0]
    if not rounds_by_rate:
        return 0.0
    if noise_multiplier == 0 and any(event is None for (_, event), _ in rounds_by_rate):
        return math.inf

    import dp_accounting  # seconds to import (SciPy); no TensorFlow
    from dp_accounting import pld, rdp

    acct = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    for (q, event), n in sorted(rounds_by_rate, key=lambda kv: (kv[0][0], repr(kv[0][1]))):
        event = event if event is not None else dp_accounting.GaussianDpEvent(noise_multiplier)
        event = event if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, event)
        acct.compose(dp_accounting.SelfComposedDpEvent(event, n) if n > 1 else event)
    return float(acct.get_epsilon(delta))


def _count_rounds(rates: list[float], events: list[Any]) -> list[tuple[tuple[float, Any], int]]:
    """Rounds per (rate, event) pair; events may be unhashable, so they are told apart by repr."""
    counts: collections.Counter = collections.Counter((q, repr(e)) for q, e in zip(rates, events))
    first = {(q, repr(e)): e for q, e in zip(rates, events)}
    return [((key[0], first[key]), n) for key, n in counts.items()]


class PrivacyLedger:
    """Composes the DP events that really happened and reports epsilon for a target delta.

    Example::

        ledger = PrivacyLedger(noise_multiplier=1.1, delta=1e-5)
        for _ in range(rounds):
            ...  # run a round
            epsilon = ledger.record_round(sampling_rate=1.0)
    """

    def __init__(self, *, noise_multiplier: float, delta: float, accountant: str = "rdp") -> None:
        """Starts an empty ledger.

        Args:
            noise_multiplier: the Gaussian mechanism's noise stddev over its clip norm (>= 0).
            delta: the delta epsilon is reported for, in (0, 1).
            accountant: ``"rdp"`` (Renyi DP, fast, slightly loose) or ``"pld"``
                (privacy loss distributions, tighter, slower).

        Raises:
            ValueError: an argument is out of range.
        """
        self._noise_multiplier = _check_noise_multiplier(noise_multiplier)
        self._delta = _check_delta(delta)
        self._accountant = _check_accountant(accountant)
        self._rates: list[float] = []
        self._events: list[Any] = []  # the DP event TFF reported for each round, or None
        self._cache: tuple[int, float] = (0, 0.0)  # (rounds, epsilon) of the last computation

    @property
    def noise_multiplier(self) -> float:
        """The noise multiplier of every recorded round."""
        return self._noise_multiplier

    @property
    def delta(self) -> float:
        """The delta epsilon is reported for."""
        return self._delta

    @property
    def accountant(self) -> str:
        """``"rdp"`` or ``"pld"``."""
        return self._accountant

    @property
    def rounds(self) -> int:
        """How many rounds have been recorded."""
        return len(self._rates)

    @property
    def sampling_rates(self) -> tuple[float, ...]:
        """The sampling rate of each recorded round, in order."""
        return tuple(self._rates)

    def record_round(self, *, sampling_rate: float = 1.0, event: Any = None) -> float:
        """Records one round in which each client took part with probability ``sampling_rate``.

        Args:
            sampling_rate: the Poisson sampling probability q of a client, in (0, 1];
                1.0 when every client trains every round.
            event: the ``dp_accounting.DpEvent`` TFF's DP aggregator reported for the
                round (``extract_dp_event_from_state``); None means
                ``GaussianDpEvent(noise_multiplier)``.

        Returns:
            Epsilon after all rounds recorded so far.

        Raises:
            ValueError: ``sampling_rate`` is out of range (nothing is recorded).
        """
        self._rates.append(_check_sampling_rate(sampling_rate))
        self._events.append(event)
        return self.epsilon()

    def epsilon(self) -> float:
        """Epsilon of the recorded rounds at ``delta``: 0.0 before any round, inf without noise."""
        if self._cache[0] != len(self._rates):
            value = _epsilon(
                noise_multiplier=self._noise_multiplier,
                delta=self._delta,
                accountant=self._accountant,
                rounds_by_rate=_count_rounds(self._rates, self._events),
            )
            self._cache = (len(self._rates), value)
        return self._cache[1]

    def to_dict(self) -> dict[str, Any]:
        """What the registry records; ``epsilon`` is ``math.inf`` when the noise is zero."""
        return {
            "noise_multiplier": self._noise_multiplier,
            "delta": self._delta,
            "accountant": self._accountant,
            "rounds": self.rounds,
            "epsilon": self.epsilon(),
            "sampling_rates": list(self._rates),
            "events": [repr(e) if e is not None else None for e in self._events],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PrivacyLedger":
        """Rebuilds a ledger from :meth:`to_dict` output (to resume a session).

        Raises:
            ValueError: a value is out of range.
        """
        ledger = cls(
            noise_multiplier=data["noise_multiplier"],
            delta=data["delta"],
            accountant=data.get("accountant", "rdp"),
        )
        ledger._rates = [_check_sampling_rate(q) for q in data.get("sampling_rates", [])]
        ledger._events = [None] * len(ledger._rates)  # rebuilt as GaussianDpEvent(noise_multiplier)
        return ledger

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger(noise_multiplier={self._noise_multiplier}, delta={self._delta}, "
            f"accountant={self._accountant!r}, rounds={self.rounds})"
        )


def epsilon_for(
    *,
    noise_multiplier: float,
    rounds: int,
    delta: float,
    sampling_rate: float = 1.0,
    accountant: str = "rdp",
) -> float:
    """Plans a session: epsilon after ``rounds`` rounds with the same sampling rate.

    Args:
        noise_multiplier: Gaussian noise stddev over the clip norm (>= 0).
        rounds: number of rounds (>= 0).
        delta: target delta, in (0, 1).
        sampling_rate: each client's chance to take part in a round, in (0, 1].
        accountant: ``"rdp"`` or ``"pld"``.

    Returns:
        Epsilon; 0.0 for zero rounds, ``math.inf`` for zero noise.

    Raises:
        ValueError: an argument is out of range.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    return _epsilon(
        noise_multiplier=_check_noise_multiplier(noise_multiplier),
        delta=_check_delta(delta),
        accountant=_check_accountant(accountant),
        rounds_by_rate=[((_check_sampling_rate(sampling_rate), None), rounds)],
    )
