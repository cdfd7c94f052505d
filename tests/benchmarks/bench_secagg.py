"""What noise at the sites and secure aggregation cost per round: ``python -m tests.benchmarks.bench_secagg``.

A benchmark, not a test: it prints numbers (issue 13). The three digits hospitals run as real ``tffprod
site serve`` processes (mTLS, ``computations = "approved"``), and three approved plans of the same
``gaussian_fixed`` session (noise multiplier 1.0, clip 1.0, delta 1e-5, ``min_sites`` 3) train over them:

A. ``noise_placement = "coordinator"`` (the default): each site releases its clipped sum, the
   coordinator adds the noise;
B. ``noise_placement = "distributed"``: each site adds its Gaussian share of the noise to its release;
C. ``noise_placement = "distributed"`` with ``secure_aggregation = true``: keys agreed (steps 0 and 1),
   masked, quantized releases with discrete Gaussian shares (step 2), masks removed (step 3).

The sessions run interleaved (A, B, C, then B, C, A, ...), each with a fresh plan (a site serves a
plan's approved rounds once). For each plan: the median seconds per round (from the registry; round 1, each
site's first call of the plan, left out; the median over a session's rounds, then over
the repetitions), and the bytes per round per site the coordinator received (``bytes_out`` of the
release and secure aggregation calls in the sites' audit logs) and sent (``bytes_in``). Then where a
round's time goes on the coordinator's clock (the benchmark wraps ``SecureRound.agree`` and
``finish``, ``RoundRouter.partials`` and the backend's ``secagg_sender`` in this process; product code
is unchanged), with each step's time at the sites as their audit logs record it.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator, Optional  # noqa: E402

TASK = "tffprod.examples.digits:task"
Z, CLIP, DELTA = 1.0, 1.0, 1e-5
# key -> (noise_placement, secure_aggregation, label)
PLANS = {
    "A": ("coordinator", False, "noise at the coordinator"),
    "B": ("distributed", False, "noise at the sites"),
    "C": ("distributed", True, "noise at the sites + SecAgg"),
}
STEPS = ("advertise", "share", "release", "unmask")  # in a round's order; only "release" without SecAgg
SEQUENTIAL = ("advertise", "share", "unmask")  # the coordinator calls the sites one after the other


class Clock:
    """Durations measured on the coordinator: ``(plan, what) -> {(session, round): [s]}``."""

    def __init__(self) -> None:
        self.plan = self.session = ""
        self.samples: dict[tuple[str, str], dict[tuple[str, int], list[float]]] = collections.defaultdict(
            lambda: collections.defaultdict(list))

    def add(self, what: str, round_num: int, seconds: float) -> None:
        self.samples[(self.plan, what)][(self.session, round_num)].append(seconds)

    def rounds(self, plan: str, what: str, first: int = 2) -> dict[tuple[str, int], float]:
        """The summed durations of ``what`` in each round from ``first`` on, over every session of ``plan``."""
        return {(session, r): sum(v) for (session, r), v in self.samples.get((plan, what), {}).items() if r >= first}

    def per_round(self, plan: str, what: str, first: int = 2) -> list[float]:
        return list(self.rounds(plan, what, first).values())


@contextlib.contextmanager
def _timed_coordinator(clock: Clock) -> Iterator[None]:
    """Times ``SecureRound.agree`` (steps 0, 1), ``SecureRound.finish`` (step 3 and the decoding),
    ``RoundRouter.partials`` (the releases, in parallel) and ``RoundLoop._round`` (the whole round:
    checkpoint and registry commit included) in this process; restored afterwards."""
    from tffprod.backends.secure_round import SecureRound
    from tffprod.sessions.rounds import RoundLoop
    from tffprod.training.router import RoundRouter

    targets = [(SecureRound, "agree"), (SecureRound, "finish"), (RoundRouter, "partials"), (RoundLoop, "_round")]
    saved = {(cls, name): cls.__dict__[name] for cls, name in targets}

    def timed(cls: type, name: str) -> Any:
        original = saved[(cls, name)]

        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                if cls is SecureRound:
                    round_num = self.round_num
                else:
                    round_num = args[0] if cls is RoundLoop else kwargs.get("round_num", 0)
                clock.add(name, round_num, time.perf_counter() - t0)

        return wrapper

    for cls, name in targets:
        setattr(cls, name, timed(cls, name))
    try:
        yield
    finally:
        for (cls, name), original in saved.items():
            setattr(cls, name, original)


def _time_secagg_calls(backend: Any, clock: Clock) -> None:
    """Wraps ``backend.secagg_sender`` (as the e2e test's Recorder does) to time each step's call."""
    send_for = type(backend).secagg_sender

    def secagg(site: str) -> Any:
        send = send_for(backend, site)

        def timed(step: str, message: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return send(step, message)
            finally:
                round_num = message.round if step == "advertise" else message.round.round
                clock.add(f"rpc {step}", round_num, time.perf_counter() - t0)

        return timed

    backend.secagg_sender = secagg


def _plan(federation: Any, registry: Any, root: Path, name: str, key: str, rounds: int) -> tuple[Path, str]:
    """An approved plan (at every site) for plan ``key``; its path and id."""
    from tffprod.examples import digits
    from tffprod.executors.approvals import approve_at_site
    from tffprod.executors.config import load_site_config
    from tffprod.protocol.plan_document import load_plan
    from tffprod.sessions.approval import coordinator_identities, make_plan, write_plan
    from tffprod.sessions.planning import plan_session
    from tffprod.sessions.spec import SessionSpec

    placement, secure, _ = PLANS[key]
    dp: dict[str, Any] = {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": CLIP, "delta": DELTA,
                          "noise_placement": placement}
    if secure:
        dp["secure_aggregation"] = True
    spec = SessionSpec.from_dict({"name": name, "task": TASK, "datasets": [f"{s}/train" for s in digits.SITES],
                                  "rounds": rounds, "seed": 0, "min_sites": 3, "round_timeout_s": 120.0,
                                  "backend": "remote", "dp": dp})
    session = plan_session(spec, registry=registry)
    path = write_plan(make_plan(session, coordinators=coordinator_identities(registry, session.training_sites)),
                      root / f"{name}.json")
    for site in digits.SITES:
        approve_at_site(path, load_site_config(federation.site_config_path(site)))
    return path, load_plan(path).plan_id


def _audit(federation: Any, plan_id: str) -> list[dict]:
    """The sites' audit records of ``plan_id``'s training calls, each with ``step`` and ``round``."""
    from tffprod.examples import digits
    from tffprod.executors.audit import AUDIT_FILE, read_audit_log
    from tffprod.executors.config import load_site_config

    records = []
    for site in digits.SITES:
        state = load_site_config(federation.site_config_path(site)).state_dir
        for record in read_audit_log(Path(state) / AUDIT_FILE):
            release, secagg = record.get("release"), record.get("secagg")
            if release and release["plan"] == plan_id and release["role"] == "train":
                records.append({**record, "site": site, "step": "release", "round": release["round"]})
            elif secagg and secagg["plan"] == plan_id:
                records.append({**record, "site": site, "step": secagg["step"], "round": secagg["round"]})
    return records


def _session(federation: Any, registry: Any, root: Path, name: str, key: str, rounds: int, clock: Clock) -> dict:
    """One session of plan ``key``: its round durations, plan time and audit records."""
    from tffprod.backends import create_backend
    from tffprod.sessions.runner import train_from_plan

    t0 = time.monotonic()
    path, plan_id = _plan(federation, registry, root, name, key, rounds)
    planning = time.monotonic() - t0
    clock.plan, clock.session = key, name
    backend = create_backend("remote", registry=registry)
    _time_secagg_calls(backend, clock)
    try:
        result = train_from_plan(path, registry=registry, backend=backend)
    finally:
        backend.close()  # train_from_plan closes it too; again in case it failed before
    rows = registry.list_rounds(result["id"])
    if result["status"] != "finished" or len(rows) != rounds:
        raise SystemExit(f"session {name} ({key}): {result['status']} after {len(rows)} of {rounds} rounds: "
                         f"{result.get('error')}")
    durations = [row["duration_s"] for row in rows]
    for round_num, seconds in enumerate(durations, 1):
        clock.add("registry", round_num, seconds)
    return {"durations": durations, "planning": planning, "audit": _audit(federation, plan_id)}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _wire(sessions: list[dict], rounds: int, sites: int, steps: tuple[str, ...] = STEPS) -> tuple[float, float]:
    """``(bytes out, bytes in)`` per round per site of ``steps``: the median over the sessions."""
    out, into = [], []
    for session in sessions:
        records = [r for r in session["audit"] if r["step"] in steps and r["status"] == "OK"]
        out.append(sum(r["bytes_out"] for r in records) / (rounds * sites))
        into.append(sum(r["bytes_in"] for r in records) / (rounds * sites))
    return _median(out), _median(into)


def _site_seconds(sessions: list[dict], step: str) -> float:
    """The median of a step's call at one site as its gateway timed it (rounds after the first)."""
    return _median([r["duration_s"] for s in sessions for r in s["audit"]
                    if r["step"] == step and r["round"] >= 2 and r["status"] == "OK"])


def _report(results: dict[str, list[dict]], clock: Clock, rounds: int, repeats: int, total_s: float) -> None:
    from tffprod.examples import digits

    sites = len(digits.SITES)
    seconds = {k: _median([_median(s["durations"][1:]) for s in results[k]]) for k in PLANS}
    wire = {k: _wire(results[k], rounds, sites) for k in PLANS}
    print(f"digits, {sites} sites through gateways (mTLS, approved plans), gaussian_fixed z={Z:g} clip={CLIP:g} "
          f"min_sites={sites}; {repeats} x {rounds} rounds per plan, interleaved")
    print("(s/round: median over rounds 2.., then over repetitions; bytes: per round per site, release and SecAgg "
          "calls, from the sites' audit logs)")
    print(f"  {'plan':<36}{'s/round':>8}{'x A':>7}{'out/site/round':>16}{'x A':>7}{'in/site/round':>15}{'x A':>7}"
          f"{'per session':>13}")
    for key, (_, _, label) in PLANS.items():
        spread = ", ".join(f"{_median(s['durations'][1:]):.3f}" for s in results[key])
        print(f"  {key}. {label:<33}{seconds[key]:8.3f}{seconds[key] / seconds['A']:7.2f}{wire[key][0]:16,.0f}"
              f"{wire[key][0] / wire['A'][0]:7.2f}{wire[key][1]:15,.0f}{wire[key][1] / wire['A'][1]:7.2f}   {spread}")
    print("  round 1 (first call of the plan at each site), median s: "
          + ", ".join(f"{k} {_median([s['durations'][0] for s in results[k]]):.2f}" for k in PLANS)
          + "; plan (compile + freeze) and 3 approvals, median s: "
          + ", ".join(f"{k} {_median([s['planning'] for s in results[k]]):.1f}" for k in PLANS))

    print("where a round goes, coordinator clock (median s per round, rounds 2..):")
    print(f"  {'plan':<6}{'keys (0+1)':>11}{'releases (2)':>14}{'unmask+sum (3)':>16}{'merge etc.':>12}"
          f"{'= registry':>12}{'+ commit':>10}{'= whole':>9}")
    for key in PLANS:
        parts = {what: clock.rounds(key, what) for what in ("agree", "partials", "finish", "registry", "_round")}
        registry = parts["registry"]
        rest = [registry[r] - sum(parts[w].get(r, 0.0) for w in ("agree", "partials", "finish")) for r in registry]
        commit = [parts["_round"][r] - registry[r] for r in registry if r in parts["_round"]]
        cells = [f"{_median(list(parts[w].values())):{width}.3f}" if parts[w] else f"{'-':>{width}}"
                 for w, width in (("agree", 11), ("partials", 14), ("finish", 16))]
        cells += [f"{_median(rest):12.3f}", f"{_median(list(registry.values())):12.3f}", f"{_median(commit):10.3f}",
                  f"{_median(list(parts['_round'].values())):9.3f}"]
        print(f"  {key:<6}" + "".join(cells))
    print("  (releases: the sites' calls in parallel, first request to last answer; merge etc.: merge or decode, "
          "after_merge; registry: the round's duration_s; commit: DP accounting, checkpoint, registry write)")

    print("secure aggregation (plan C) step by step, median per round (rounds 2..):")
    print(f"  {'step':<50}{'coordinator s':>14}{'site s/call':>12}{'out/site':>10}{'in/site':>10}")
    c = results["C"]
    agree, finish = _median(clock.per_round("C", "agree")), _median(clock.per_round("C", "finish"))
    calls = {step: _median(clock.per_round("C", f"rpc {step}")) for step in SEQUENTIAL}
    rows = [
        ("0 advertise: signed key pairs (3 calls in turn)", calls["advertise"], "advertise"),
        ("1 share: encrypted Shamir shares (3 in turn)", calls["share"], "share"),
        ("  coordinator's own work in steps 0+1", agree - calls["advertise"] - calls["share"], None),
        ("2 masked releases (3 in parallel)", _median(clock.per_round("C", "partials")), "release"),
        ("3 unmask: shares revealed (3 calls in turn)", calls["unmask"], "unmask"),
        ("  coordinator: unmasking the sum and decoding", finish - calls["unmask"], None),
    ]
    for label, coordinator_s, step in rows:
        if step is None:
            print(f"  {label:<50}{coordinator_s:14.3f}")
            continue
        out, into = _wire(c, rounds, sites, (step,))
        print(f"  {label:<50}{coordinator_s:14.3f}{_site_seconds(c, step):12.3f}{out:10,.0f}{into:10,.0f}")
    print("  release at one site (site s/call), plans A and B: "
          f"A {_site_seconds(results['A'], 'release'):.3f}, B {_site_seconds(results['B'], 'release'):.3f}")
    print(f"whole benchmark: {total_s:.0f} s (site start, {len(PLANS) * repeats} plans and sessions)")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16, help="rounds per session (the first is left out)")
    parser.add_argument("--repeats", type=int, default=3, help="sessions per plan, interleaved")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.repeats < 1:
        parser.error("--rounds must be at least 2 and --repeats at least 1")
    from tffprod.dev.local_sites import LocalFederation
    from tffprod.examples import digits
    from tffprod.registry import Registry

    started = time.monotonic()
    clock = Clock()
    results: dict[str, list[dict]] = {k: [] for k in PLANS}
    keys = list(PLANS)
    with tempfile.TemporaryDirectory(prefix="tffprod-bench-secagg-") as tmp:
        root = Path(tmp)
        paths = digits.prepare(root / "data")
        datasets = {site: {"train": {"path": paths[site]["train"], "task": TASK}} for site in digits.SITES}
        with LocalFederation(root / "fed", datasets, computations="approved") as federation, \
                Registry.open(root / "registry.db") as registry, _timed_coordinator(clock):
            federation.register(registry)
            for rep in range(args.repeats):
                for key in keys[rep % len(keys):] + keys[:rep % len(keys)]:  # A B C, B C A, C A B, ...
                    name = f"bench-secagg-{key.lower()}-{rep + 1}"
                    results[key].append(_session(federation, registry, root, name, key, args.rounds, clock))
    _report(results, clock, args.rounds, args.repeats, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
