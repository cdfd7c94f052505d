"""What computation approval costs per round: ``python -m tests.benchmarks.bench_approval``.

A benchmark, not a test: it prints numbers. Two federations of the three digits hospitals run
as real ``tffprod site serve`` processes (mTLS): one with ``computations = "any"`` trained from
the spec, one with ``computations = "approved"`` trained from an approved plan (the gateway
then hashes every computation it is sent, parses each value to check dataset names, follows
value ids to the released result and writes the site's ledger). Each prints the median
seconds per round (first round, compilation, left out) and the plan's compile time.
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
    from tffprod.spec import SessionSpec

    return SessionSpec.from_dict({
        "name": "bench-approval", "task": TASK, "datasets": [f"{s}/train" for s in digits.SITES],
        "rounds": rounds, "seed": 0, "backend": "remote",
        "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5}})


def _session(root: Path, paths: dict, policy: str, rounds: int) -> tuple[float, float]:
    """``(median s/round, seconds to make and approve the plan)`` for one federation."""
    from tffprod.backends import create_backend
    from tffprod.examples import digits
    from tffprod.executors.approvals import approve_at_site
    from tffprod.executors.config import load_site_config
    from tffprod.federation import LocalFederation
    from tffprod.plan import coordinator_identities, make_plan, train_from_plan, write_plan
    from tffprod.registry import Registry
    from tffprod.session import plan_session, train

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
    return statistics.median(durations), planning


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="rounds per session (first is left out)")
    args = parser.parse_args(argv)
    from tffprod.examples import digits

    with tempfile.TemporaryDirectory(prefix="tffprod-bench-approval-") as tmp:
        root = Path(tmp)
        paths = digits.prepare(root / "data")
        any_round, _ = _session(root, paths, "any", args.rounds)
        approved_round, planning = _session(root, paths, "approved", args.rounds)
    print(f"digits, 3 sites through gateways (mTLS), {args.rounds - 1} rounds each, median s/round:")
    print(f"  computations = \"any\"       {any_round:.3f}")
    print(f"  computations = \"approved\"  {approved_round:.3f}  (x{approved_round / any_round:.2f})")
    print(f"  plan (compile + freeze) and three approvals: {planning:.1f} s once per session")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
