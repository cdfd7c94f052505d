"""The site's own privacy ledger: rounds actually served, per approved plan.

A site does not trust the coordinator's arithmetic. Each release of an approved
training computation's result is one round of that plan, written to a SQLite
file in the site's state folder before the result leaves. Epsilon is recomputed
from the plan's DP terms (noise multiplier, sampling rate, delta) and the rounds
served, with the same ``dp_accounting`` accountant the coordinator uses
(:func:`tffprod.privacy.accounting.epsilon_for`). Plans add up per dataset (basic
composition: epsilons and deltas sum), like the coordinator's budgets. A plan
that samples clients or sites is charged all its approved rounds at its first
release (:func:`charged_rounds`).

A new round is admitted only if the plan has approved rounds left and, for
every budgeted dataset of the plan at this site, the spend after that round
stays within the budget.

A repeat is not a new round. Each release row keeps the call's digest (the
computation's SHA-256 and the digest of its argument, see
:func:`tffprod.executors.release.release_digest`); a training release whose digest the plan has
already released computes the same function of the same inputs again (a
coordinator resuming after a crash re-runs the round that was in flight). It is
admitted even when the plan's rounds or the budget are used up, and recorded as
the round it repeats, without a new row. Revoking the plan still stops it: only
approved plans are candidates.
"""

from __future__ import annotations

import datetime
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, TypeVar

import grpc

from tffprod.executors.approvals import Approval
from tffprod.executors.datarefs import RequestRefused
from tffprod.privacy.terms import evaluation_epsilon, plan_epsilon, samples

__all__ = ["LEDGER_FILE", "Release", "SiteLedger", "charged_rounds"]

LEDGER_FILE = "privacy-ledger.sqlite"
_SLACK = 1e-9  # float noise when a budget is exactly a whole number of rounds
_T = TypeVar("_T")


def _evaluated_only(approval: Approval, dataset: str) -> bool:
    """Whether ``approval`` reads ``dataset`` only for evaluation here."""
    return dataset in approval.roles.get("eval", ()) and dataset not in approval.roles.get("train", ())


def charged_rounds(approval: Approval, served: int) -> int:
    """Rounds of ``approval`` charged to this site's budgets once it has ``served`` rounds.

    Without sampling, the rounds served. A plan that samples (clients at ``sampling_rate``
    < 1, or k of N) is charged all its approved rounds from its first release: the
    released model's guarantee composes every round, also those that sampled nobody here,
    and the site never sees those rounds, so it cannot count them as they happen.
    """
    return approval.rounds if samples(approval.privacy) and served > 0 else served


class Release(NamedTuple):
    """A recorded training release: its round of the plan, and whether it repeated that round."""

    round: int
    repeat: bool


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
        if self._outdated():  # checked first: a current ledger opens without a write lock
            self._transaction(self._create_or_migrate)

    def _outdated(self) -> bool:
        with self._lock:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(releases)")}
            indexes = {row[1] for row in self._db.execute("PRAGMA index_list(releases)")}
        with self._lock:
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return "call_digest" not in columns or "releases_call" not in indexes or "evaluations" not in tables

    def _transaction(self, body: Callable[[], _T]) -> _T:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = body()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return result

    def _create_or_migrate(self) -> None:
        """The ``releases`` table; a ledger written before repeats were known gets ``call_digest``
        (NULL in its old rows: those rounds are never matched as repeated)."""
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS releases (plan_id TEXT NOT NULL, round INTEGER NOT NULL, "
            "identity TEXT, released_at TEXT NOT NULL, call_digest TEXT, PRIMARY KEY (plan_id, round))")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(releases)")}
        if "call_digest" not in columns:
            self._db.execute("ALTER TABLE releases ADD COLUMN call_digest TEXT")
        self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS releases_call ON releases (plan_id, call_digest)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS evaluations (plan_id TEXT NOT NULL, dataset TEXT NOT NULL, identity TEXT, "
            "released_at TEXT NOT NULL, call_digest TEXT NOT NULL, PRIMARY KEY (plan_id, dataset))")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def served(self, plan_id: str) -> int:
        """Training rounds of ``plan_id`` this site has released."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM releases WHERE plan_id = ?", (plan_id,)).fetchone()
        return int(count)

    def repeat_of(self, plan_id: str, call_digest: Optional[str]) -> Optional[int]:
        """The round of ``plan_id`` that released the call ``call_digest``, or None (also for no digest)."""
        if call_digest is None:
            return None
        with self._lock:
            row = self._db.execute("SELECT round FROM releases WHERE plan_id = ? AND call_digest = ?",
                                   (plan_id, call_digest)).fetchone()
        return None if row is None else int(row[0])

    def spent(self, dataset: str, approvals: Iterable[Approval]) -> tuple[float, float]:
        """``(epsilon, delta)`` spent on ``dataset`` by the approved plans that read it: their training rounds
        served, or, for a dataset a plan only evaluates under evaluation noise, its one evaluation release."""
        epsilon = delta = 0.0
        for approval in approvals:
            if dataset not in approval.datasets:
                continue
            if _evaluated_only(approval, dataset) and "evaluation" in approval.privacy:
                e, d = evaluation_epsilon(approval.privacy) if self.evaluated(approval.plan_id, dataset) else (0.0, 0.0)
            else:
                e, d = plan_epsilon(approval.privacy, charged_rounds(approval, self.served(approval.plan_id)))
            epsilon, delta = epsilon + e, delta + d
        return epsilon, delta

    def eval_budget_refusal(self, approval: Approval, dataset: str, approvals: list[Approval]) -> Optional[str]:
        """Why ``approval`` may not release its evaluation of ``dataset`` here (a budget it would exceed, or
        un-noised metrics of a dataset with a budget), or None."""
        budget = self._budgets.get(dataset)
        if budget is None:
            return None
        if "evaluation" not in approval.privacy:
            return (f"site {self.site}: dataset '{dataset}' has a privacy budget; plan {approval.plan_id[:16]} "
                    "releases its evaluation metrics un-noised (set [dp] eval_noise_multiplier)")
        others = [a for a in approvals if a.plan_id != approval.plan_id]
        other_eps, other_delta = self.spent(dataset, others)
        eps, delta = evaluation_epsilon(approval.privacy)
        if other_eps + eps > budget["epsilon"] + _SLACK or other_delta + delta > budget["delta"] + _SLACK:
            return self._exhausted(dataset, "evaluating it", other_eps + eps, other_delta + delta, budget)
        return None

    def _exhausted(self, dataset: str, what: str, epsilon: float, delta: float, budget: Mapping[str, float]) -> str:
        """The refusal of a release that would overspend ``dataset``'s budget, naming what it exceeds."""
        over = [f"{name} to {value:.4g} (budget {budget[name]:g})" for name, value in
                (("epsilon", epsilon), ("delta", delta)) if value > budget[name] + _SLACK]
        return (f"site {self.site}: privacy budget of dataset '{dataset}' exhausted: {what} would bring "
                f"{' and '.join(over)}")

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
                return (f"site {self.site}: dataset '{name}' has a privacy budget; "
                        f"plan {approval.plan_id[:16]} uses no DP")
            others = [a for a in approvals if a.plan_id != approval.plan_id]
            other_eps, other_delta = self.spent(name, others)
            eps, delta = plan_epsilon(approval.privacy, charged_rounds(approval, served + 1))
            if other_eps + eps > budget["epsilon"] + _SLACK or other_delta + delta > budget["delta"] + _SLACK:
                return self._exhausted(name, f"round {served + 1} of plan {approval.plan_id[:16]}", other_eps + eps,
                                       other_delta + delta, budget)
        return None

    def admit(self, candidates: list[Approval], approvals: list[Approval],
              call_digest: Optional[str] = None) -> Approval:
        """The first of ``candidates`` that has released ``call_digest`` (a repeat, always
        admitted), else the first whose next round may run here.

        Raises:
            RequestRefused: PERMISSION_DENIED naming the reason, when none may.
        """
        for approval in candidates:
            if self.repeat_of(approval.plan_id, call_digest) is not None:
                return approval
        reasons = []
        for approval in candidates:
            reason = self.refusal(approval, approvals)
            if reason is None:
                return approval
            reasons.append(reason)
        raise RequestRefused(grpc.StatusCode.PERMISSION_DENIED, reasons[0] if reasons else
                             f"site {self.site}: no approved plan for this computation")

    def record(self, approval: Approval, identity: Optional[str], call_digest: Optional[str] = None) -> int:
        """Write one more served round of ``approval``; returns its round number (see ``record_call``)."""
        return self.record_call(approval, identity, call_digest).round

    def record_call(self, approval: Approval, identity: Optional[str], call_digest: Optional[str]) -> Release:
        """Record a release of ``approval``'s training computation.

        A ``call_digest`` the plan has released before is a repeat: nothing is written and the
        round it repeats is returned. Anything else (``call_digest`` None included) is one more
        served round.
        """
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()

        def write() -> Release:
            if call_digest is not None:
                row = self._db.execute("SELECT round FROM releases WHERE plan_id = ? AND call_digest = ?",
                                       (approval.plan_id, call_digest)).fetchone()
                if row is not None:
                    return Release(int(row[0]), True)
            (count,) = self._db.execute("SELECT COUNT(*) FROM releases WHERE plan_id = ?",
                                        (approval.plan_id,)).fetchone()
            self._db.execute("INSERT INTO releases (plan_id, round, identity, released_at, call_digest) "
                             "VALUES (?, ?, ?, ?, ?)", (approval.plan_id, count + 1, identity, now, call_digest))
            return Release(int(count) + 1, False)

        return self._transaction(write)

    # -- evaluation and computation releases: each dataset once per plan ------------------------

    def evaluated(self, plan_id: str, dataset: str) -> Optional[str]:
        """The call digest of ``plan_id``'s evaluation (or computation) release of ``dataset``, or None."""
        with self._lock:
            row = self._db.execute("SELECT call_digest FROM evaluations WHERE plan_id = ? AND dataset = ?",
                                   (plan_id, dataset)).fetchone()
        return None if row is None else str(row[0])

    def record_eval(self, approval: Approval, dataset: str, identity: Optional[str], call_digest: str) -> bool:
        """Record ``approval``'s evaluation release of ``dataset``; True if it repeats the recorded one.

        A plan evaluates each of its evaluation datasets once; the identical call again (a
        resumed coordinator) is a repeat.

        Raises:
            RequestRefused: PERMISSION_DENIED when the dataset was evaluated with another call.
        """
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()

        def write() -> bool:
            row = self._db.execute("SELECT call_digest FROM evaluations WHERE plan_id = ? AND dataset = ?",
                                   (approval.plan_id, dataset)).fetchone()
            if row is not None:
                if row[0] != call_digest:
                    raise RequestRefused(grpc.StatusCode.PERMISSION_DENIED, self.eval_refusal(approval, dataset))
                return True
            self._db.execute("INSERT INTO evaluations (plan_id, dataset, identity, released_at, call_digest) "
                             "VALUES (?, ?, ?, ?, ?)", (approval.plan_id, dataset, identity, now, call_digest))
            return False

        return self._transaction(write)

    def eval_refusal(self, approval: Approval, dataset: str) -> str:
        return (f"site {self.site}: plan {approval.plan_id[:16]} has already evaluated dataset '{dataset}' "
                "(a plan evaluates, or computes on, each of its datasets once)")
