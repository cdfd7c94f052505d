"""The one error of secure aggregation.

Every refusal of :mod:`tffprod.privacy.secagg` (a forged advertisement, a tampered share, a late
release, an unmask request that would reveal too much, too few shares) raises :class:`SecAggError`
with a one-line message that names the participant and the problem, never key or data bytes. It is
a ``ValueError`` and deliberately not a ``TffprodError``: the site's and the coordinator's code that
runs a round decides which tffprod error (and exit code) a refusal becomes.
"""

from __future__ import annotations

__all__ = ["SecAggError", "who"]


class SecAggError(ValueError):
    """A secure-aggregation step was refused: bad input, a forged or tampered message, or a protocol violation."""


def who(name: object) -> str:
    """``name`` quoted for a one-line message (a name comes from the network: shortened and escaped)."""
    text = repr(name) if isinstance(name, str) else f"<{type(name).__name__}>"
    return text if len(text) <= 70 else text[:66] + "...'"
