"""Privacy accounting: epsilon of the DP rounds that really ran, via ``dp_accounting``.

tffprod does no DP math of its own: each round is the DP event
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` (just ``GaussianDpEvent(z)`` when
every client takes part, ``q == 1``), or, when a fixed number k of N clients is
drawn, ``SampledWithoutReplacementDpEvent(N, k, GaussianDpEvent(z))`` (replace-one
neighbours; RDP only: dp_accounting's PLD accountant does not support it). An RDP
or PLD accountant from ``dp_accounting`` composes the rounds and reports epsilon
for the target delta.

``dp_accounting`` does not import TensorFlow, but it imports SciPy and takes
seconds to load, so it is imported only when an epsilon is computed: importing
this module stays cheap for the CLI.

With a handful of sites that all train every round (``q == 1``), epsilon is
large (z=1.1, 100 rounds, delta=1e-5 gives about 83): report it, don't hide it.
"""

from __future__ import annotations

import collections
import functools
import math
from typing import Any, Mapping, Optional

ACCOUNTANTS = ("rdp", "pld")

# A round's sampling: a Poisson rate q, or (population, sample_size) for a fixed-size sample.
_Rate = float | tuple[int, int]


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


def _check_fixed_sample(fixed_sample: Any) -> tuple[int, int]:
    ok = isinstance(fixed_sample, tuple) and len(fixed_sample) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in fixed_sample)
    if not ok or not 1 <= fixed_sample[1] <= fixed_sample[0]:
        raise ValueError(f"fixed_sample must be (population, sample_size) with 1 <= sample_size <= population, "
                         f"got {fixed_sample!r}")
    return fixed_sample


def supports(accountant: str, *, fixed_sample: Any = None) -> bool:
    """Whether ``accountant`` can account rounds sampled this way (PLD cannot do fixed-size samples)."""
    return not (accountant == "pld" and fixed_sample is not None)


def _check_accountant(accountant: Any) -> str:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    return accountant


def _epsilon(*, noise_multiplier: float, delta: float, accountant: str,
             rounds_by_rate: list[tuple[tuple[_Rate, Any], int]]) -> float:
    """Epsilon after ``n`` rounds of each ``((q, event), n)`` in ``rounds_by_rate``.

    ``q`` is a Poisson sampling rate, or ``(population, sample_size)`` for a fixed-size
    sample without replacement. ``event`` is a ``dp_accounting.DpEvent`` reported by
    TFF, or None for ``GaussianDpEvent(noise_multiplier)``. Composition is commutative, so the
    rounds of one pair are composed as one ``SelfComposedDpEvent``: this gives
    the epsilon of composing them one by one, at the cost of one event per pair.
    """
    rounds_by_rate = [(key, n) for key, n in rounds_by_rate if n > 0]
    if not rounds_by_rate:
        return 0.0
    if noise_multiplier == 0 and any(event is None for (_, event), _ in rounds_by_rate):
        return math.inf

    fixed = {isinstance(q, tuple) for (q, _), _ in rounds_by_rate}
    if len(fixed) > 1:
        raise ValueError("one ledger cannot mix Poisson and fixed-size sampling (their neighbouring relations differ)")
    fixed_sample = True in fixed
    if not supports(accountant, fixed_sample=fixed_sample or None):
        raise ValueError("the PLD accountant does not support fixed-size sampling without replacement; use rdp")

    import dp_accounting  # seconds to import (SciPy); no TensorFlow

    events = []
    for (q, event), n in sorted(rounds_by_rate, key=lambda kv: (repr(kv[0][0]), repr(kv[0][1]))):
        event = event if event is not None else dp_accounting.GaussianDpEvent(noise_multiplier)
        if isinstance(q, tuple):
            event = dp_accounting.SampledWithoutReplacementDpEvent(q[0], q[1], event)
        elif q != 1.0:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        events.append((event, n))
    if fixed_sample or accountant == "rdp":
        return _rdp_epsilon(events, delta, replace_one=fixed_sample)
    return _pld_epsilon(events, delta)


# Accounting one round's event is most of the cost of an epsilon (RDP: 0.07 s, PLD: 0.4 s for a sampled
# Gaussian), and a session's rounds repeat a few events: each distinct event is accounted once per process,
# and n rounds of it composed from that, exactly as dp_accounting composes ``SelfComposedDpEvent(event, n)``.


_RDP_OF: dict[tuple[str, bool], tuple[Any, Any]] = {}  # (repr(event), replace_one) -> (orders, RDP)


def _rdp_of(event: Any, replace_one: bool) -> tuple[Any, Any]:
    """(orders, RDP) of one ``event``, as dp_accounting's RDP accountant composes it (events may be
    unhashable, so they are told apart by ``repr``)."""
    key = (repr(event), replace_one)
    if key not in _RDP_OF:
        if len(_RDP_OF) >= 256:
            _RDP_OF.clear()
        _RDP_OF[key] = _account_rdp(event, replace_one)
    return _RDP_OF[key]


def _account_rdp(event: Any, replace_one: bool) -> tuple[Any, Any]:
    import dp_accounting
    from dp_accounting import rdp

    relation = dp_accounting.NeighboringRelation.REPLACE_ONE if replace_one else \
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    acct = rdp.RdpAccountant(neighboring_relation=relation)
    acct.compose(event)
    return acct.orders, acct.rdp


def _rdp_epsilon(events: list[tuple[Any, int]], delta: float, *, replace_one: bool) -> float:
    from dp_accounting.rdp import rdp_privacy_accountant

    orders, total = None, 0.0
    for event, n in events:
        orders, rdp_one = _rdp_of(event, replace_one)
        total = total + n * rdp_one
    return float(rdp_privacy_accountant.compute_epsilon(orders, total, delta)[0])


_PLD_INTERVAL = 1e-4  # dp_accounting's PLDAccountant default value discretization


@functools.lru_cache(maxsize=64)
def _sampled_gaussian_pld(noise_multiplier: float, sampling_probability: float) -> Any:
    """The PLD of one Poisson-sampled Gaussian round, as dp_accounting's PLD accountant builds it."""
    from dp_accounting.pld import privacy_loss_distribution

    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=noise_multiplier, value_discretization_interval=_PLD_INTERVAL,
        sampling_prob=sampling_probability)


def _pld_epsilon(events: list[tuple[Any, int]], delta: float) -> float:
    """PLD epsilon: sampled Gaussian rounds from their cached PLD; any other event by the accountant itself."""
    import dp_accounting
    from dp_accounting import pld
    from dp_accounting.pld import privacy_loss_distribution

    cached = all(isinstance(e, dp_accounting.PoissonSampledDpEvent)
                 and isinstance(e.event, dp_accounting.GaussianDpEvent)
                 and 0 < e.sampling_probability and e.event.noise_multiplier > 0 for e, _ in events)
    if not cached:
        acct = pld.PLDAccountant()
        for event, n in events:
            acct.compose(dp_accounting.SelfComposedDpEvent(event, n) if n > 1 else event)
        return float(acct.get_epsilon(delta))
    composed = privacy_loss_distribution.identity(value_discretization_interval=_PLD_INTERVAL)
    for event, n in events:
        composed = composed.compose(
            _sampled_gaussian_pld(event.event.noise_multiplier, event.sampling_probability).self_compose(n))
    return float(composed.get_epsilon_for_delta(delta))


def _count_rounds(rates: list[Any], events: list[Any]) -> list[tuple[tuple[_Rate, Any], int]]:
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
        self._rates: list[Any] = []  # q, or (population, sample_size) for a fixed-size sample
        self._events: list[Any] = []  # the DP event TFF reported for each round, or None
        self._cache: dict[str, tuple[int, float]] = {}  # accountant -> (rounds, epsilon) last computed

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
        """The sampling rate of each recorded round, in order (k / N for a fixed-size sample)."""
        return tuple(q[1] / q[0] if isinstance(q, tuple) else q for q in self._rates)

    def record_round(self, *, sampling_rate: float = 1.0, event: Any = None,
                     fixed_sample: Optional[tuple[int, int]] = None) -> float:
        """Records one round in which each client took part with probability ``sampling_rate``.

        Args:
            sampling_rate: the Poisson sampling probability q of a client, in (0, 1];
                1.0 when every client trains every round.
            event: the ``dp_accounting.DpEvent`` TFF's DP aggregator reported for the
                round (``extract_dp_event_from_state``); None means
                ``GaussianDpEvent(noise_multiplier)``.
            fixed_sample: ``(population, sample_size)`` instead of ``sampling_rate`` when
                exactly ``sample_size`` of ``population`` clients were drawn without
                replacement (RDP only).

        Returns:
            Epsilon after all rounds recorded so far.

        Raises:
            ValueError: ``sampling_rate`` or ``fixed_sample`` is out of range, or the rounds
                would mix Poisson and fixed-size sampling (nothing is recorded).
        """
        key = _check_fixed_sample(fixed_sample) if fixed_sample is not None else _check_sampling_rate(sampling_rate)
        if self._rates and isinstance(self._rates[0], tuple) != isinstance(key, tuple):
            raise ValueError("one ledger cannot mix Poisson and fixed-size sampling")
        if isinstance(key, tuple) and self._accountant == "pld":
            raise ValueError("the PLD accountant does not support fixed-size sampling without replacement; use rdp")
        self._rates.append(key)
        self._events.append(event)
        return self.epsilon()

    def supports(self, accountant: str) -> bool:
        """Whether ``accountant`` can account the rounds recorded so far."""
        return supports(accountant, fixed_sample=True if any(isinstance(q, tuple) for q in self._rates) else None)

    def epsilon(self, accountant: Optional[str] = None) -> float:
        """Epsilon of the recorded rounds at ``delta``: 0.0 before any round, inf without noise.

        Args:
            accountant: ``"rdp"`` or ``"pld"`` for an answer by another accountant than
                the ledger's own (e.g. PLD beside RDP).

        Raises:
            ValueError: the accountant does not support the recorded rounds (see :meth:`supports`).
        """
        accountant = self._accountant if accountant is None else _check_accountant(accountant)
        rounds, value = self._cache.get(accountant, (-1, 0.0))
        if rounds != len(self._rates):
            value = _epsilon(
                noise_multiplier=self._noise_multiplier,
                delta=self._delta,
                accountant=accountant,
                rounds_by_rate=_count_rounds(self._rates, self._events),
            )
            self._cache[accountant] = (len(self._rates), value)
        return value

    def to_dict(self) -> dict[str, Any]:
        """What the registry records; ``epsilon`` is ``math.inf`` when the noise is zero."""
        fixed = {"fixed_samples": [list(q) if isinstance(q, tuple) else None for q in self._rates]} \
            if any(isinstance(q, tuple) for q in self._rates) else {}
        return {
            "noise_multiplier": self._noise_multiplier,
            "delta": self._delta,
            "accountant": self._accountant,
            "rounds": self.rounds,
            "epsilon": self.epsilon(),
            "sampling_rates": list(self.sampling_rates),
            "events": [repr(e) if e is not None else None for e in self._events],
            **fixed,
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
        rates = data.get("sampling_rates", [])
        fixed = data.get("fixed_samples") or [None] * len(rates)
        ledger._rates = [_check_fixed_sample(tuple(f)) if f is not None else _check_sampling_rate(q)
                         for q, f in zip(rates, fixed)]
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
    fixed_sample: Optional[tuple[int, int]] = None,
) -> float:
    """Plans a session: epsilon after ``rounds`` rounds with the same sampling rate.

    Args:
        noise_multiplier: Gaussian noise stddev over the clip norm (>= 0).
        rounds: number of rounds (>= 0).
        delta: target delta, in (0, 1).
        sampling_rate: each client's chance to take part in a round, in (0, 1].
        accountant: ``"rdp"`` or ``"pld"``.
        fixed_sample: ``(population, sample_size)`` instead of ``sampling_rate``: a
            fixed-size sample without replacement each round (RDP only).

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
        rounds_by_rate=[((_check_fixed_sample(fixed_sample) if fixed_sample is not None
                          else _check_sampling_rate(sampling_rate), None), rounds)],
    )
