"""The router's per-round deadline (moved from unit/test_churn.py: importing the router imports TFF, about 20 s)."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.e2e


# ------------------------------------------------------------------ the router's per-round deadline


class _SleepyContext:
    """A site context whose computation takes ``seconds`` (the router only calls ``invoke``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def invoke(self, computation, arg):
        time.sleep(self.seconds)
        return ("partial", arg)


class _SleepyBackend:
    def __init__(self, seconds_by_site: dict[str, float]) -> None:
        self._contexts = {site: _SleepyContext(s) for site, s in seconds_by_site.items()}

    def site_context(self, site: str) -> _SleepyContext:
        return self._contexts[site]

    def run_site(self, site: str, computation, state, refs, *, round_num: int = 0):
        return self._contexts[site].invoke(computation, refs)


def test_router_takes_a_deadline_per_round():
    from tffprod.errors import SessionError
    from tffprod.training.router import RoundRouter

    backend = _SleepyBackend({"fast": 0.0, "slow": 3.0})
    router = RoundRouter(backend, form=None, timeout_s=60.0, site_computation="site part")
    started = time.monotonic()
    outcomes = {o.site: o for o in router.partials(None, {"fast": ["a"], "slow": ["b"]}, timeout_s=0.5)}
    assert time.monotonic() - started < 2.5
    assert outcomes["fast"].status == "ok"
    assert (outcomes["slow"].status, outcomes["slow"].error) == ("timeout", "no result within 0.5 s")
    with pytest.raises(SessionError, match=r"slow: timeout \(no result within 0.25 s\)"):
        router.run_round(None, {"slow": ["b"]}, timeout_s=0.25)


class _FlakyBackend(_SleepyBackend):
    """Unavailable for the first ``failures`` calls of each site, then answers; counts reconnects."""

    def __init__(self, failures: int) -> None:
        super().__init__({"flaky": 0.0})
        self.failures, self.reconnects = failures, []

    def run_site(self, site: str, computation, state, refs, *, round_num: int = 0):
        from tffprod.errors import SiteUnavailableError

        if self.failures:
            self.failures -= 1
            raise SiteUnavailableError("site unavailable (UNAVAILABLE: connection refused)")
        return super().run_site(site, computation, state, refs, round_num=round_num)

    def reconnect(self, site: str) -> None:
        self.reconnects.append(site)


def test_a_retry_and_a_site_given_up_are_logged_as_warnings(caplog, monkeypatch):
    import logging

    from tffprod.training.router import RoundRouter

    # the CLI's handler stops it; caplog is on root
    monkeypatch.setattr(logging.getLogger("tffprod"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="tffprod")
    backend = _FlakyBackend(failures=1)
    router = RoundRouter(backend, form=None, timeout_s=60.0, site_computation="site part", retries=2, backoff_s=0.01)
    (outcome,) = router.partials(None, {"flaky": ["a"]}, round_num=4)
    assert (outcome.status, outcome.attempts, backend.reconnects) == ("ok", 2, ["flaky"])
    assert [r.getMessage() for r in caplog.records] == [
        "round 4: site flaky unavailable (attempt 1 of 3), retrying in 0.0 s: "
        "site unavailable (UNAVAILABLE: connection refused)"]

    caplog.clear()
    backend = _FlakyBackend(failures=5)
    router = RoundRouter(backend, form=None, timeout_s=60.0, site_computation="site part", retries=1, backoff_s=0.01)
    (outcome,) = router.partials(None, {"flaky": ["a"]}, round_num=5)
    assert (outcome.status, outcome.attempts) == ("error", 2)
    assert caplog.records[-1].getMessage() == ("round 5: site flaky gave up after 2 attempt(s): "
                                               "site unavailable (UNAVAILABLE: connection refused)")
    assert all(r.name == "tffprod.training.router" and r.levelno == logging.WARNING for r in caplog.records)
