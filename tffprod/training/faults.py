"""Named crash points for the fault-injection suite.

``TFFPROD_CRASH_AT=NAME:ROUND`` makes the coordinator kill itself with SIGKILL
when it reaches crash point ``NAME`` in round ``ROUND``: the way a power cut or
the OOM killer would stop it, with no cleanup. Unset (always, outside tests),
a crash point is one dictionary lookup.

Crash points, in the order a round reaches them:
    round-start          the round's site calls are about to start
    checkpoint-partial   half of the round's checkpoint file is written
    checkpoint-written   the checkpoint is on disk, its round not yet committed
    round-committed      the round's registry rows are committed
"""

from __future__ import annotations

import os
import signal

ENV = "TFFPROD_CRASH_AT"
POINTS = ("round-start", "checkpoint-partial", "checkpoint-written", "round-committed")


def crash_point(name: str, round_num: int) -> None:
    """SIGKILL this process if ``TFFPROD_CRASH_AT`` names this point and round."""
    assert name in POINTS, name
    if os.environ.get(ENV) == f"{name}:{round_num}":
        os.kill(os.getpid(), signal.SIGKILL)
