"""The round router: one computation in mergeable form, run across sites.

Each round: the per-site part (``up_to_merge``) runs at every selected site
concurrently, one daemon thread per site (TFF's remote executor blocks, so
asyncio would serialize them; facts section 4), each under the round's
deadline; a site that is unavailable is tried again a bounded number of times
within it. The partial results are merged and the round finished
(``after_merge``) at the coordinator, so DP noise and the server optimizer
never run at a site. A site that misses the deadline is left behind: its
daemon thread never keeps the process from exiting.
"""

from __future__ import annotations

import logging
import concurrent.futures
import dataclasses
import threading
import time
from typing import Any, Callable, Mapping, Optional

import tensorflow_federated as tff

from tffprod.backends.base import Backend
from tffprod.errors import SessionError, SiteUnavailableError
from tffprod.sites.rpc_errors import status_line

log = logging.getLogger(__name__)

Struct = tff.structure.Struct


@dataclasses.dataclass
class SiteOutcome:
    """What one site did in one round."""

    site: str
    status: str  # "ok" | "timeout" | "error"
    duration_s: float
    clients: int
    examples: int = 0
    error: Optional[str] = None
    attempts: int = 1
    partial: Any = dataclasses.field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "status": self.status,
            "duration_s": round(self.duration_s, 4),
            "clients": self.clients,
            "examples": self.examples,
            "error": self.error,
            "attempts": self.attempts,
        }


@dataclasses.dataclass
class RoundOutcome:
    """The coordinator's result of a round and who took part."""

    output: Any
    sites: list[SiteOutcome]
    duration_s: float

    @property
    def ok_sites(self) -> list[SiteOutcome]:
        return [s for s in self.sites if s.status == "ok"]


class RoundRouter:
    """Runs a ``MergeableCompForm`` over a backend's sites."""

    def __init__(self, backend: Backend, form: Any, *, timeout_s: float = 600.0, min_sites: int = 1,
                 retries: int = 2, backoff_s: float = 0.5, site_computation: Any = None,
                 secure: Optional[Callable[[int, list[str]], Any]] = None) -> None:
        self._backend = backend
        self._form = form
        # An approved plan's frozen per-site computation, or the form's own.
        self._site_computation = site_computation if site_computation is not None else form.up_to_merge
        self._timeout_s = timeout_s
        self._min_sites = min_sites
        self._retries = retries
        self._backoff_s = backoff_s
        # Secure aggregation: (round, sites) -> a ``tffprod.backends.secure_round.SecureRound``.
        self._secure = secure
        self._numpy_merge: Any = None  # tffprod.training.merge.leafwise_sum of form.merge, found on first use

    def partials(self, state: Any, refs_by_site: Mapping[str, list[str]], *,
                 timeout_s: Optional[float] = None, round_num: int = 0, secure: Any = None) -> list[SiteOutcome]:
        """Run the per-site part at every site concurrently; never raises for a site's failure.

        ``timeout_s`` overrides the router's deadline for this call; ``round_num`` is the training
        round it belongs to (0: not a training round).
        """
        timeout_s = self._timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        deadline = started + timeout_s
        futures = {site: self._spawn(site, state, refs, deadline, round_num,
                                     secure.input_for(site) if secure is not None else None)
                   for site, refs in refs_by_site.items()}
        outcomes = []
        for site, future in futures.items():
            clients = len(refs_by_site[site])
            try:
                partial, duration, attempts = future.result(timeout=max(0.0, deadline - time.monotonic()))
                outcomes.append(SiteOutcome(site, "ok", duration, clients, partial=partial, attempts=attempts))
            except concurrent.futures.TimeoutError:
                outcomes.append(SiteOutcome(site, "timeout", time.monotonic() - started, clients,
                                            error=f"no result within {timeout_s:g} s"))
            except Exception as e:  # a site's failure is recorded, not raised
                outcomes.append(SiteOutcome(site, "error", time.monotonic() - started, clients,
                                            error=status_line(e), attempts=getattr(e, "attempts", 1)))
        return outcomes

    def _spawn(self, site: str, state: Any, refs: list[str], deadline: float,
               round_num: int, secagg: Any = None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        thread = threading.Thread(target=self._run_site, args=(future, site, state, refs, deadline, round_num, secagg),
                                  name=f"tffprod-site-{site}", daemon=True)
        thread.start()
        return future

    def _run_site(self, future: concurrent.futures.Future, site: str, state: Any, refs: list[str],
                  deadline: float, round_num: int, secagg: Any = None) -> None:
        future.set_running_or_notify_cancel()
        t0, backoff = time.monotonic(), self._backoff_s
        extra = {"secagg": secagg} if secagg is not None else {}
        for attempt in range(1, self._retries + 2):
            try:
                result = self._backend.run_site(site, self._site_computation, state, refs, round_num=round_num,
                                                **extra)
                future.set_result((result, time.monotonic() - t0, attempt))
                return
            except SiteUnavailableError as e:
                if attempt > self._retries or time.monotonic() + backoff >= deadline:
                    log.warning("round %d: site %s gave up after %d attempt(s): %s", round_num, site, attempt, e)
                    e.attempts = attempt
                    future.set_exception(e)
                    return
                log.warning("round %d: site %s unavailable (attempt %d of %d), retrying in %.1f s: %s",
                            round_num, site, attempt, self._retries + 1, backoff, e)
                time.sleep(backoff)
                backoff *= 2
                self._backend.reconnect(site)  # the site may be back, restarted: start afresh
            except BaseException as e:  # reported through the future
                future.set_exception(e)
                return

    def merge(self, partials: list[Any]) -> Any:
        """Fold partial results with ``merge`` at the coordinator: in NumPy where ``merge`` is provably a
        leaf-by-leaf sum (:mod:`tffprod.training.merge`), else by calling it."""
        if len(partials) > 1 and self._numpy_merge is None:
            from tffprod.training.merge import leafwise_sum

            self._numpy_merge = leafwise_sum(self._form.merge) or False
        if len(partials) > 1 and self._numpy_merge:
            return self._numpy_merge(partials, self._site_computation.type_signature.result)
        ctx = self._backend.coordinator_context()
        merged = partials[0]
        for partial in partials[1:]:
            merged = ctx.invoke(self._form.merge, Struct.unnamed(merged, partial))
        return merged

    def finish(self, state: Any, merged: Any) -> Any:
        """Run ``after_merge`` at the coordinator on the merged partials."""
        ctx = self._backend.coordinator_context()
        original = Struct.unnamed(state, []) if state is not None else []
        return ctx.invoke(self._form.after_merge, Struct.unnamed(original, merged))

    def run_round(self, state: Any, refs_by_site: Mapping[str, list[str]], *,
                  min_sites: Optional[int] = None, timeout_s: Optional[float] = None,
                  round_num: int = 0) -> RoundOutcome:
        """One full round; raises SessionError when fewer than ``min_sites`` sites succeed.

        ``min_sites`` overrides the router's for this round (a round that samples clients
        calls only the sites that hold one); ``timeout_s`` overrides its deadline (an
        adaptive deadline, ``tffprod.sessions.reliability.DeadlinePolicy``).
        """
        t0 = time.monotonic()
        needed = self._min_sites if min_sites is None else min_sites
        secure = self._secure(round_num, list(refs_by_site)) if self._secure is not None else None
        if secure is None:
            sites = self.partials(state, refs_by_site, timeout_s=timeout_s, round_num=round_num)
        else:  # steps 0 and 1 of secure aggregation; sites that fail them do not release
            agreed = set(secure.agree())
            sites = self.partials(state, {s: r for s, r in refs_by_site.items() if s in agreed}, timeout_s=timeout_s,
                                  round_num=round_num, secure=secure)
            sites += [SiteOutcome(s, "error", 0.0, len(r), error=secure.failed.get(s, "left the secure aggregation"))
                      for s, r in refs_by_site.items() if s not in agreed]
        ok = [s for s in sites if s.status == "ok"]
        if len(ok) < needed or not ok:
            detail = "; ".join(f"{s.site}: {s.status} ({s.error})" for s in sites if s.status != "ok")
            raise SessionError(f"round needs {max(needed, 1)} site(s), {len(ok)} succeeded: {detail}")
        if secure is None:
            merged = self.merge([s.partial for s in ok])
        else:  # the coordinator learns only the sum of the releases
            from tffprod.backends.release import pack

            for outcome in ok:
                secure.add_release(outcome.site, outcome.partial)
            merged = pack(self._site_computation.type_signature.result, iter(secure.finish()))
        output = self.finish(state, merged)
        return RoundOutcome(output=output, sites=sites, duration_s=time.monotonic() - t0)
