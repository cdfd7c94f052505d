"""Site churn: which sites a round calls, and how long it waits for them.

Two small pieces, all pure (no TensorFlow, no registry, no clock), configured by
:class:`tffprod.config.reliability.ReliabilityConfig` (the spec's ``[reliability]`` table):

- :class:`SiteHealth` counts each site's failures in a row and quarantines a site
  that fails ``quarantine_after`` rounds in a row for the rest of the session;
- :class:`DeadlinePolicy` gives each round its deadline: the spec's fixed
  ``round_timeout_s``, or one derived from how long sites took in recent rounds.

Both trackers learn only from what the session records per round (the
participants' ``site``, ``status`` and ``duration_s``), so feeding a resumed
session's recorded rounds to fresh ones rebuilds the same state.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Mapping, Optional, Sequence

from tffprod.config.reliability import ReliabilityConfig

STATUSES = ("ok", "timeout", "error")


class SiteHealth:
    """Counts each site's failures in a row and quarantines a site that reaches the limit.

    A round's participants are the sites it called. A site with status ``"ok"`` starts
    counting again from 0, ``"timeout"`` and ``"error"`` add one; a site the round did not
    call (absent from the participants) keeps its count. A quarantined site stays
    quarantined for the session.

    Args:
        quarantine_after: failures in a row that quarantine a site; 0 never quarantines.
    """

    def __init__(self, quarantine_after: int) -> None:
        if isinstance(quarantine_after, bool) or not isinstance(quarantine_after, int) or quarantine_after < 0:
            raise ValueError(f"quarantine_after must be an integer >= 0, got {quarantine_after!r}")
        self.quarantine_after = quarantine_after
        self._failures: dict[str, int] = {}
        self._quarantined: dict[str, dict[str, Any]] = {}

    @classmethod
    def replay(cls, quarantine_after: int,
               rounds: Iterable[tuple[int, Sequence[Mapping[str, Any]]]]) -> "SiteHealth":
        """A tracker that has observed ``rounds`` (``(round_num, participants)`` pairs, in order)."""
        health = cls(quarantine_after)
        for round_num, participants in rounds:
            health.observe(round_num, participants)
        return health

    def observe(self, round_num: int, participants: Sequence[Mapping[str, Any]]) -> None:
        """Counts one round.

        Args:
            round_num: the round's number, recorded with a quarantine.
            participants: one mapping per site the round called, with at least ``site`` and
                ``status`` (``"ok"``, ``"timeout"`` or ``"error"``), and ``error`` (text or None).

        Raises:
            ValueError: a participant's status is none of those.
        """
        for participant in participants:
            site, status = participant["site"], participant["status"]
            if status not in STATUSES:
                raise ValueError(f"site {site!r}: unknown status {status!r} (expected one of {STATUSES})")
            if status == "ok":
                self._failures[site] = 0
                continue
            failures = self._failures[site] = self._failures.get(site, 0) + 1
            if 0 < self.quarantine_after <= failures and site not in self._quarantined:
                reason = participant.get("error") or status
                self._quarantined[site] = {"round": round_num, "failures": failures, "reason": reason}

    @property
    def failures(self) -> dict[str, int]:
        """Site -> its failures in a row so far (sites seen at least once)."""
        return dict(self._failures)

    @property
    def quarantined(self) -> dict[str, dict[str, Any]]:
        """Site -> ``{"round": r, "failures": n, "reason": text}``: the round that quarantined it,
        its failures in a row then, and that round's error."""
        return {site: dict(entry) for site, entry in self._quarantined.items()}

    def active(self, sites: Iterable[str]) -> list[str]:
        """``sites`` without the quarantined ones, in the order given."""
        return [site for site in sites if site not in self._quarantined]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SiteHealth):
            return NotImplemented
        return (self.quarantine_after, self._failures, self._quarantined) == \
            (other.quarantine_after, other._failures, other._quarantined)

    def __repr__(self) -> str:
        return (f"SiteHealth(quarantine_after={self.quarantine_after}, failures={self._failures}, "
                f"quarantined={sorted(self._quarantined)})")


class DeadlinePolicy:
    """Each round's deadline, fixed or derived from earlier rounds.

    Fixed: always ``round_timeout_s``. Adaptive: ``deadline_factor`` times the slowest
    successful site over the last ``deadline_window`` rounds, clamped to
    ``[deadline_min_s, deadline_max_s]`` (``deadline_max_s`` defaults to ``round_timeout_s``;
    should the minimum exceed the maximum, the maximum wins). Until the window holds a
    successful site, the deadline is the maximum. A round that called no site does not count;
    a round in which every site failed counts, with no duration, so after ``deadline_window``
    such rounds the deadline is back at the maximum.

    Args:
        config: the session's ``[reliability]`` settings.
        round_timeout_s: the spec's ``round_timeout_s``.
    """

    def __init__(self, config: ReliabilityConfig, round_timeout_s: float) -> None:
        self._config = config
        self._round_timeout_s = float(round_timeout_s)
        self._slowest: collections.deque[Optional[float]] = collections.deque(maxlen=config.deadline_window)

    def observe(self, participants: Sequence[Mapping[str, Any]]) -> None:
        """Counts one round: its participants as in :meth:`SiteHealth.observe`, with ``duration_s``."""
        if not participants:
            return
        durations = [float(p["duration_s"]) for p in participants if p["status"] == "ok"]
        self._slowest.append(max(durations) if durations else None)

    def next_deadline(self) -> float:
        """Seconds the next round waits for its sites."""
        if self._config.deadline == "fixed":
            return self._round_timeout_s
        upper = self._config.deadline_max_s
        upper = self._round_timeout_s if upper is None else upper
        slowest = [d for d in self._slowest if d is not None]
        if not slowest:
            return upper
        return min(upper, max(self._config.deadline_min_s, self._config.deadline_factor * max(slowest)))
