"""The site's own privacy ledger: rounds actually served, per approved plan.

A site does not trust the coordinator's arithmetic. Each release of an approved
training computation's result is one round of that plan, written to a SQLite
file in the site's state folder before the result leaves. Epsilon is recomputed
from the plan's DP terms (noise multiplier, sampling rate, delta) and the rounds
served, with the same ``dp_accounting`` accountant the coordinator uses
(:func:`tffprod.accounting.epsilon_for`). Plans add up per dataset (basic
composition: epsilons and deltas sum), like the coordinator's budgets.

A new round is admitted only if the plan has approved rounds left and, for
every budgeted dataset of the plan at this site, the spend after that round
stays within the budget.
"""

from __future__ import annotations

import datetime
import functools
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import grpc

from tffprod.executors.approvals import Approval
from tffprod.executors.datarefs import RequestRefused

__all__ = ["LEDGER_FILE", "SiteLedger", "plan_epsilon"]

LEDGER_FILE = "privacy-ledger.sqlite"
_SLACK = 1e-9  # float noise when a budget is exactly a whole number of rounds


@functools.lru_cache(maxsize=1024)
def _epsilon(noise_multiplier: float, rounds: int, delta: float, sampling_rate: float,
             fixed_sample: Optional[tuple[int, int]]) -> float:
    from tffprod.accounting import epsilon_for

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
    return _epsilon(float(privacy["noise_multiplier"]), rounds, delta, float(privacy.get("sampling_rate", 1.0)),
                    tuple(int(v) for v in fixed) if fixed else None), delta


class SiteLedger:
    """Rounds served per plan, in ``STATE_DIR/privacy-ledger.sqlite``.

    Args:
        path: the SQLite file (created).
        site: the site's name, for messages.
        budgets: catalog name -> ``{"epsilon", "delta"}`` or None.
    """

    def __init__(self, path: Path | str, *, site: str, budgets: Mapping[str, Optional[Mapping[str, float]]]) -> None:
        self.path = Path(path)
        self.site = site
        self._budgets = {name: dict(b) for name, b in budgets.items() if b}
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS releases (plan_id TEXT NOT NULL, round INTEGER NOT NULL, "
            "identity TEXT, released_at TEXT NOT NULL, PRIMARY KEY (plan_id, round))")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def served(self, plan_id: str) -> int:
        """Training rounds of ``plan_id`` this site has released."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM releases WHERE plan_id = ?", (plan_id,)).fetchone()
        return int(count)

    def spent(self, dataset: str, approvals: Iterable[Approval]) -> tuple[float, float]:
        """``(epsilon, delta)`` spent on ``dataset`` by the approved plans that read it."""
        epsilon = delta = 0.0
        for approval in approvals:
            if dataset in approval.datasets:
                e, d = plan_epsilon(approval.privacy, self.served(approval.plan_id))
                epsilon, delta = epsilon + e, delta + d
        return epsilon, delta

    def report(self, approvals: list[Approval]) -> list[dict[str, Any]]:
        """Per dataset with a budget: the budget, what is spent and what remains."""
        rows = []
        for name, budget in sorted(self._budgets.items()):
            epsilon, delta = self.spent(name, approvals)
            rows.append({"dataset": name, "budget": budget, "spent": {"epsilon": epsilon, "delta": delta},
                         "remaining": {"epsilon": budget["epsilon"] - epsilon, "delta": budget["delta"] - delta}})
        return rows

    def refusal(self, approval: Approval, approvals: list[Approval]) -> Optional[str]:
        """Why the next round of ``approval`` may not run here, or None if it may."""
        served = self.served(approval.plan_id)
        if served >= approval.rounds:
            return (f"site {self.site}: plan {approval.plan_id[:16]} has used all {approval.rounds} approved "
                    "round(s)")
        for name in approval.datasets:
            budget = self._budgets.get(name)
            if budget is None:
                continue
            if approval.privacy.get("mechanism", "none") == "none":
                return f"site {self.site}: dataset '{name}' has a privacy budget; plan {approval.plan_id[:16]} uses no DP"
            others = [a for a in approvals if a.plan_id != approval.plan_id]
            other_eps, other_delta = self.spent(name, others)
            eps, delta = plan_epsilon(approval.privacy, served + 1)
            if other_eps + eps > budget["epsilon"] + _SLACK or other_delta + delta > budget["delta"] + _SLACK:
                return (f"site {self.site}: privacy budget of dataset '{name}' exhausted: round {served + 1} of plan "
                        f"{approval.plan_id[:16]} would bring epsilon to {other_eps + eps:.4g} "
                        f"(budget {budget['epsilon']:g})")
        return None

    def admit(self, candidates: list[Approval], approvals: list[Approval]) -> Approval:
        """The first of ``candidates`` whose next round may run here.

        Raises:
            RequestRefused: PERMISSION_DENIED naming the reason, when none may.
        """
        reasons = []
        for approval in candidates:
            reason = self.refusal(approval, approvals)
            if reason is None:
                return approval
            reasons.append(reason)
        raise RequestRefused(grpc.StatusCode.PERMISSION_DENIED, reasons[0] if reasons else
                             f"site {self.site}: no approved plan for this computation")

    def record(self, approval: Approval, identity: Optional[str]) -> int:
        """Write one more served round of ``approval``; returns its round number."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (count,) = self._db.execute("SELECT COUNT(*) FROM releases WHERE plan_id = ?",
                                            (approval.plan_id,)).fetchone()
                self._db.execute("INSERT INTO releases VALUES (?, ?, ?, ?)",
                                 (approval.plan_id, count + 1, identity, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(count) + 1
