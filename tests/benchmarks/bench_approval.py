"""What the site protocol costs per round: ``python -m tests.benchmarks.bench_approval``.

A benchmark, not a test: it prints numbers. Two federations of the three digits hospitals run
as real ``tffprod site serve`` processes (mTLS): one with ``computations = "any"`` trained from
the spec through TFF's executor protocol (the development policy), one with ``computations =
"approved"`` trained from an approved plan through the release protocol (the site builds each
call, checks the state against the plan and writes its ledger). For each: the median seconds
per round (first round left out), the bytes per round per site on the wire (from the sites'
audit logs: request and response bytes of every call, over all rounds), and the peak resident
memory of the site processes (gateway; the worker is a separate process). Also the plan's
compile and approval time.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

TASK = "tffprod.examples.digits:task"


def _spec(rounds: int):
    from tffprod.examples import digits
    from tffprod.sessions.spec import SessionSpec

    return SessionSpec.from_dict({
        "name": "bench-approval", "task": TASK, "datasets": [f"{s}/train" for s in digits.SITES],
        "rounds": rounds, "seed": 0, "backend": "remote",
        "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5}})


def _wire_and_memory(federation, sites, rounds: int) -> tuple[float, float, float]:
    """``(bytes in, bytes out per round per site, peak RSS of a site process in MB)``."""
    import json

    from tffprod.executors.config import load_site_config

    total_in = total_out = 0
    for site in sites:
        state = load_site_config(federation.site_config_path(site)).state_dir
        for line in (state / "audit.jsonl").read_text().splitlines():
            record = json.loads(line)
            if "SiteInfo" not in record["method"]:
                total_in, total_out = total_in + record["bytes_in"], total_out + record["bytes_out"]
    peaks = []
    for pid in federation.pids().values():
        status = Path(f"/proc/{pid}/status").read_text()
        peaks.append(int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024)
    per = rounds * len(sites)
    return total_in / per, total_out / per, max(peaks)


def _session(root: Path, paths: dict, policy: str, rounds: int) -> tuple[float, float, tuple]:
    """``(median s/round, seconds to make and approve the plan, wire and memory)`` for one federation."""
    from tffprod.backends import create_backend
    from tffprod.examples import digits
    from tffprod.executors.approvals import approve_at_site
    from tffprod.executors.config import load_site_config
    from tffprod.dev.local_sites import LocalFederation
    from tffprod.sessions.approval import coordinator_identities, make_plan, write_plan
    from tffprod.sessions.runner import train_from_plan
    from tffprod.registry import Registry
    from tffprod.sessions.planning import plan_session
    from tffprod.sessions.runner import train

    datasets = {site: {"train": {"path": paths[site]["train"], "task": TASK}} for site in digits.SITES}
    federation = LocalFederation(root / policy, datasets, computations=policy)
    federation.prepare()
    with federation, Registry.open(root / f"{policy}.db") as registry:
        federation.register(registry)
        spec = _spec(rounds)
        backend = create_backend("remote", registry=registry)
        planning = 0.0
        if policy == "approved":
            t0 = time.monotonic()
            session = plan_session(spec, registry=registry)
            plan_path = write_plan(make_plan(session, coordinators=coordinator_identities(
                registry, session.training_sites)), root / "plan.json")
            for site in digits.SITES:
                approve_at_site(plan_path, load_site_config(federation.site_config_path(site)))
            planning = time.monotonic() - t0
            result = train_from_plan(plan_path, registry=registry, backend=backend)
        else:
            result = train(spec, registry=registry, backend=backend)
        durations = [r["duration_s"] for r in registry.list_rounds(result["id"])][1:]
        wire = _wire_and_memory(federation, digits.SITES, rounds)
    return statistics.median(durations), planning, wire


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="rounds per session (first is left out)")
    args = parser.parse_args(argv)
    from tffprod.examples import digits

    with tempfile.TemporaryDirectory(prefix="tffprod-bench-approval-") as tmp:
        root = Path(tmp)
        paths = digits.prepare(root / "data")
        any_round, _, any_wire = _session(root, paths, "any", args.rounds)
        approved_round, planning, wire = _session(root, paths, "approved", args.rounds)
    print(f"digits, 3 sites through gateways (mTLS), {args.rounds} rounds each (median s/round leaves round 1 out):")
    print("                                            s/round  bytes in/round/site  out/round/site  site peak RSS")
    for label, seconds, (bytes_in, bytes_out, rss) in (
            ("computations = \"any\" (executor protocol)", any_round, any_wire),
            ("computations = \"approved\" (releases)", approved_round, wire)):
        print(f"  {label:<42}{seconds:7.3f}  {bytes_in:19,.0f}  {bytes_out:14,.0f}  {rss:10.0f} MB")
    print(f"  approved / any: x{approved_round / any_round:.2f} s/round")
    print(f"  plan (compile + freeze) and three approvals: {planning:.1f} s once per session")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
