"""The rounds of a session: each one run, checkpointed and committed.

Every round's server state goes to a checkpoint file before the round's
registry rows (metrics, participants, epsilon and privacy spend) are committed
in one transaction, so a crash at any moment loses at most the round in
flight and never counts one twice. Crash points for the fault-injection suite
are marked with :func:`tffprod.training.faults.crash_point`.
"""

from __future__ import annotations

import logging
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from tffprod.backends.base import Backend
from tffprod.errors import SessionError
from tffprod.privacy.placement import AT_SITES
from tffprod.privacy.sampling import ClientSampler
from tffprod.sessions.round_metrics import train_metrics
from tffprod.sessions.spec import SessionSpec

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore, RoundRow
    from tffprod.sessions.events import SessionEvents

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RoundReport:
    """What the progress callback sees after each round."""

    round_num: int
    rounds: int
    metrics: dict  # the training metrics (tffprod.sessions.round_metrics.train_metrics)
    sites: list
    duration_s: float
    epsilon: Optional[float]
    clients: Optional[int] = None
    epsilon_pld: Optional[float] = None


def _participants(outcome: Any, plan: Any) -> list[dict]:
    """One record per called site; ``examples`` is None for sampled clients (their sizes stay at the site)."""
    examples: dict[str, int] = {}
    for row in plan.datasets:
        examples[row["site"]] = examples.get(row["site"], 0) + int(row["num_examples"])
    client_level = plan.population.client_level
    out = []
    for site in outcome.sites if outcome else []:
        record = site.to_dict()
        record["examples"] = 0 if site.status != "ok" else None if client_level else examples.get(site.site, 0)
        out.append(record)
    return out


def _refs_by_site(sampler: ClientSampler, backend: Backend) -> dict[str, list[str]]:
    """This round's sampled clients as references, grouped by site (sites without any are left out)."""
    refs: dict[str, list[str]] = {}
    for client in sampler.draw():
        refs.setdefault(client.dataset["site"], []).append(backend.reference(client.reference_row()))
    return refs


class RoundLoop:
    """The rounds of one run of a session, each committed with its checkpoint.

    Everything a round depends on (server state, client sampler, privacy ledger,
    site health, deadlines) is rebuilt from the ``completed`` rounds' rows and the
    last one's checkpoint, so a resumed session continues exactly where the
    committed rounds left it.
    """

    def __init__(self, plan: Any, session_id: str, registry: RegistryStore, backend: Backend, trainer: Any,
                 checkpoints: Path, completed: tuple[RoundRow, ...], *, events: Optional[SessionEvents] = None) -> None:
        from tffprod.sessions.reliability import DeadlinePolicy, SiteHealth

        spec = plan.spec
        self.plan = plan
        self.session_id = session_id
        self.registry = registry
        self.backend = backend
        self.trainer = trainer
        self.checkpoints = checkpoints
        self.events = events  # TensorBoard: each round's row once it is committed
        self.ledger = _ledger(spec)
        self.population = plan.population
        self.sampler = ClientSampler(self.population, seed=spec.seed) if self.population.client_level else None
        self.health = SiteHealth(spec.reliability.quarantine_after)
        self.deadlines = DeadlinePolicy(spec.reliability, spec.round_timeout_s)
        self.event = None  # TFF's DP event of the last round that ran
        self.train_metrics: dict = {}
        self.rounds_run = 0
        self.last_round = min(spec.rounds, plan.budget.max_rounds) if plan.budget.limited else spec.rounds
        self.kept: list[Path] = []
        self._replay(completed)

    def _replay(self, completed: tuple[RoundRow, ...]) -> None:
        """Bring every piece of round-to-round state to the end of ``completed``."""
        self.first_round = len(completed) + 1
        if not completed:
            return
        last = completed[-1]
        checkpoint = last.get("checkpoint")
        if not checkpoint:
            raise SessionError(f"session {self.session_id}: round {last['round_num']} has no checkpoint "
                               "(recorded by a tffprod without resume); it cannot be resumed")
        self.trainer.restore(checkpoint, last["checkpoint_sha256"])
        self.kept = [Path(checkpoint)]
        # The restored state reports the DP event of the last round that ran (none if no round did).
        event = self._dp_event() if self.ledger and any(row["participants"] for row in completed) else None
        for row in completed:
            if self.sampler:
                self.sampler.draw()
            ran = bool(row["participants"])
            self.event = event if ran else self.event
            if self.ledger:
                self.ledger.record_round(event=self.event, **self.population.accounting())
            self.health.observe(row["round_num"], row["participants"])
            self.deadlines.observe(row["participants"])
            if ran:
                metrics = row["metrics"]
                self.train_metrics = train_metrics(metrics)
        if self.ledger and last["epsilon"] is not None and \
                abs(self.ledger.epsilon() - last["epsilon"]) > 1e-6 * max(1.0, abs(last["epsilon"])):
            raise SessionError(f"session {self.session_id}: replaying {len(completed)} rounds gives epsilon "
                               f"{self.ledger.epsilon():.6g}, the registry recorded {last['epsilon']:.6g}")

    def _dp_event(self) -> Any:
        """TFF's DP event of the last round; None (the plan's Gaussian at the model's noise multiplier)
        when the sites add the noise, which TFF's aggregator at the coordinator does not see, or when each
        client's step is clipped at the site (the coordinator's query then does not clip)."""
        spec = self.plan.spec
        at_sites = spec.dp.noise_placement in AT_SITES
        one_step = spec.sampling is not None and spec.sampling.user_update == "one_step"
        return None if at_sites or one_step else self.trainer.dp_event()

    def _cancel_requested(self) -> bool:
        return bool(self.registry.get_session(self.session_id).get("cancel_requested_at"))

    def _refs(self) -> Optional[dict[str, list[str]]]:
        """This round's references by site, quarantined sites left out."""
        refs = _refs_by_site(self.sampler, self.backend) if self.sampler else dict(self.trainer.refs_by_site)
        active = set(self.health.active(list(refs)))
        kept = {site: r for site, r in refs.items() if site in active}
        if not self.sampler and len(kept) < self.plan.spec.min_sites:
            quarantined = ", ".join(f"{site} ({q['failures']} failed rounds: {q['reason']})"
                                    for site, q in self.health.quarantined.items())
            raise SessionError(f"only {len(kept)} site(s) remain outside quarantine, min_sites is "
                               f"{self.plan.spec.min_sites}; quarantined: {quarantined}")
        return kept

    def run(self, progress: Optional[Callable[[RoundReport], None]]) -> bool:
        """Run the remaining rounds; True if a cancel stopped them at a round boundary."""
        for round_num in range(self.first_round, self.last_round + 1):
            if self._cancel_requested():
                return True
            self._round(round_num, progress)
            self.rounds_run += 1
        return False

    def _round(self, round_num: int, progress: Optional[Callable[[RoundReport], None]]) -> None:
        from tffprod.training.faults import crash_point
        from tffprod.training.metrics import plain_metrics

        crash_point("round-start", round_num)
        refs = self._refs()
        # A round in which nobody was sampled leaves the state as it was, and still counts for privacy.
        outcome = self.trainer.run_round(refs, timeout_s=self.deadlines.next_deadline(),
                                         round_num=round_num) if refs else None
        ledger, population = self.ledger, self.population
        self.event = self._dp_event() if ledger and outcome else self.event
        epsilon = ledger.record_round(event=self.event, **population.accounting()) if ledger else None
        epsilon_pld = ledger.epsilon("pld") if ledger and population.client_level and ledger.supports("pld") \
            else None
        metrics = plain_metrics(outcome.output.metrics) if outcome else {}
        if outcome:
            self.train_metrics = train_metrics(metrics)
        participants = _participants(outcome, self.plan)
        clients = sum(p["clients"] for p in participants if p["status"] == "ok")
        duration_s = outcome.duration_s if outcome else 0.0
        path, sha256 = self.trainer.save(self.checkpoints, round_num)
        crash_point("checkpoint-written", round_num)
        row = self.registry.record_round(
            self.session_id,
            round_num=round_num,
            metrics=metrics,
            participants=participants,
            duration_s=duration_s,
            epsilon=epsilon,
            spend=_spend(self.plan, epsilon, round_num) if ledger else None,
            sampling_rate=population.sampling_rate,
            clients=clients,
            epsilon_pld=epsilon_pld,
            checkpoint=str(path),
            checkpoint_sha256=sha256,
        )
        crash_point("round-committed", round_num)
        if self.events:
            self.events.round(row)
        self.kept = (self.kept + [Path(path)])[-2:]
        from tffprod.training.checkpoint import remove_stale

        remove_stale(self.checkpoints, set(self.kept))
        quarantined = set(self.health.quarantined)
        self.health.observe(round_num, participants)
        for site in sorted(set(self.health.quarantined) - quarantined):
            failure = self.health.quarantined[site]
            log.warning("round %d: site %s quarantined for the rest of session %s after %d failed rounds: %s",
                        round_num, site, self.session_id, failure["failures"], failure["reason"])
        self.deadlines.observe(participants)
        log.info("session %s: round %d of %d committed in %.2f s: %d of %d site(s) ok, %d client(s)%s",
                 self.session_id, round_num, self.plan.spec.rounds, duration_s,
                 sum(p["status"] == "ok" for p in participants), len(participants), clients,
                 f", epsilon {epsilon:.4g}" if epsilon is not None else "")
        if progress:
            progress(RoundReport(round_num, self.plan.spec.rounds, self.train_metrics, participants, duration_s,
                                 epsilon, clients, epsilon_pld))


def _spend(plan: Any, epsilon: float, rounds: int) -> list[dict]:
    """What this session has spent so far on each training dataset (every dataset, every round)."""
    identities = dict.fromkeys((row["site"], row["name"]) for row in plan.datasets)
    return [{"site": site, "name": name, "epsilon": epsilon, "delta": plan.spec.dp.delta, "rounds": rounds}
            for site, name in identities]


def _ledger(spec: SessionSpec):
    if not spec.dp.enabled:
        return None
    from tffprod.privacy.accounting import PrivacyLedger

    noise_multiplier, delta = spec.model_noise_multiplier, spec.dp.delta
    # An enabled [dp] has both (DPConfig checks).
    assert noise_multiplier is not None and delta is not None
    return PrivacyLedger(noise_multiplier=noise_multiplier, delta=delta)
