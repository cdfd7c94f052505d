"""The session spec's optional ``[reliability]`` table: how a session treats failing and slow sites.

Example::

    [reliability]
    quarantine_after = 3        # failures in a row; 0 never quarantines
    deadline = "adaptive"       # or "fixed": every round gets round_timeout_s
    deadline_factor = 3.0       # x the slowest successful site of recent rounds
    deadline_window = 5         # recent = this many rounds
    deadline_min_s = 10.0
    deadline_max_s = 300.0      # default: round_timeout_s

The runtime policies that read it (quarantine, deadlines) are in :mod:`tffprod.sessions.reliability`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from tffprod.config import fields
from tffprod.errors import SpecError

DEADLINES = ("fixed", "adaptive")
_KEYS = ("quarantine_after", "deadline", "deadline_factor", "deadline_window", "deadline_min_s", "deadline_max_s")
_ADAPTIVE_KEYS = _KEYS[2:]


@dataclasses.dataclass(frozen=True)
class ReliabilityConfig:
    """How a session treats failing and slow sites (the spec's ``[reliability]`` table).

    Attributes:
        quarantine_after: a site whose status is ``"timeout"`` or ``"error"`` this many rounds
            in a row is not called again in the session; 0 never quarantines.
        deadline: ``"fixed"``: every round waits the spec's ``round_timeout_s``;
            ``"adaptive"``: see :class:`DeadlinePolicy`.
        deadline_factor: adaptive: the deadline is this multiple (>= 1) of the slowest
            successful site over the last ``deadline_window`` rounds.
        deadline_window: adaptive: how many recent rounds count (>= 1).
        deadline_min_s: adaptive: the shortest deadline, in seconds (> 0).
        deadline_max_s: adaptive: the longest deadline, and the deadline before any site has
            succeeded; None means the spec's ``round_timeout_s``.
    """

    quarantine_after: int = 3
    deadline: str = "fixed"
    deadline_factor: float = 3.0
    deadline_window: int = 5
    deadline_min_s: float = 10.0
    deadline_max_s: Optional[float] = None

    def __post_init__(self) -> None:
        set_ = lambda key, value: object.__setattr__(self, key, value)  # noqa: E731
        fields.integer("reliability.quarantine_after", self.quarantine_after, minimum=0)
        fields.choice("reliability.deadline", self.deadline, DEADLINES)
        set_("deadline_factor", fields.number("reliability.deadline_factor", self.deadline_factor,
                                              lambda v: v >= 1, "a number >= 1"))
        fields.integer("reliability.deadline_window", self.deadline_window, minimum=1)
        set_("deadline_min_s", fields.number("reliability.deadline_min_s", self.deadline_min_s,
                                             lambda v: v > 0, "a number > 0"))
        if self.deadline_max_s is not None:
            set_("deadline_max_s", fields.number("reliability.deadline_max_s", self.deadline_max_s,
                                                 lambda v: v >= self.deadline_min_s,
                                                 f"a number >= deadline_min_s ({self.deadline_min_s:g})"))

    def check_timeout(self, round_timeout_s: float) -> None:
        """Checks the deadlines against the spec's ``round_timeout_s``, the most any round may wait.

        Raises:
            SpecError: ``deadline_max_s`` exceeds it, or (adaptive, without ``deadline_max_s``)
                ``deadline_min_s`` does.
        """
        if self.deadline_max_s is not None and self.deadline_max_s > round_timeout_s:
            raise SpecError(f"'reliability.deadline_max_s' must be <= round_timeout_s ({round_timeout_s:g}), "
                            f"got {self.deadline_max_s:g}")
        if self.deadline == "adaptive" and self.deadline_max_s is None and self.deadline_min_s > round_timeout_s:
            raise SpecError(f"'reliability.deadline_min_s' must be <= round_timeout_s ({round_timeout_s:g}), "
                            f"got {self.deadline_min_s:g}")

    def to_dict(self) -> dict[str, Any]:
        """The ``[reliability]`` table: adaptive keys only for adaptive deadlines, and
        ``deadline_max_s`` only when set (TOML has no null)."""
        data = dataclasses.asdict(self)
        if self.deadline == "fixed":
            for key in _ADAPTIVE_KEYS:
                data.pop(key, None)
        if data.get("deadline_max_s", 0) is None:
            del data["deadline_max_s"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ReliabilityConfig":
        """Builds a config from a ``[reliability]`` table; missing keys take their defaults.

        Raises:
            SpecError: an unknown key, an adaptive-only key with ``deadline = "fixed"``, or a bad value.
        """
        fields.known_keys("reliability.", fields.table("reliability", data), _KEYS)
        adaptive_only = [key for key in _ADAPTIVE_KEYS if key in data]
        if adaptive_only and data.get("deadline", "fixed") == "fixed":
            raise SpecError(f"'reliability.{adaptive_only[0]}' applies only to deadline = 'adaptive'")
        return cls(**data)
