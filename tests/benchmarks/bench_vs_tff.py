"""tffprod beside TFF's own simulation of the same task: ``python -m tests.benchmarks.bench_vs_tff``.

A benchmark, not a test: it prints numbers (issue 15, item 3). One workload for every row
(``tests.benchmarks.vs_tff_task``): 32 float features, a binary label, a Keras MLP 32-64-64-1 (6,337
parameters), N sites x 2,000 examples each as TFRecord, batch 32, one local epoch, weighted FedAvg
(client SGD 0.1, server SGD 1.0), ``--rounds`` rounds per session. Rows:

``A TFF sim, in memory``
    TFF 0.87 alone (``tests.benchmarks.tff_sim``): ``build_weighted_fed_avg``, each client a
    ``tf.data.Dataset`` from in-memory tensors, all clients in one ``worker_binary`` reached by a TFF
    execution context over a gRPC channel (as TFF's default local context does, and as tffprod's local
    backend does for each site). A round is one ``process.next``.
``B TFF sim, files``
    the same, each client's data its TFRecord file's path, opened inside the client computation
    (``compose_dataset_computation_with_learning_process``): what tffprod does, without tffprod, and
    with the plain reader a TFF user writes (``TFRecordDataset`` + ``parse_single_example``), not
    tffprod's own, so that B stays put while tffprod changes.
``B' TFF sim, files, tffprod's reader``
    B with tffprod's own reader (``tffprod.data.tfdata.training_dataset_computation``: 256 records parsed
    at a time): what D would cost in one TFF worker, its reader's gain taken out of the comparison.
``C tffprod local``
    a real tffprod session: ``tffprod.sessions.runner.train`` from a ``SessionSpec`` on
    ``create_backend("local")`` (a ``worker_binary`` per site and one for the coordinator), registry
    and artifacts in the run's folder.
``D tffprod remote``
    real ``tffprod site serve`` processes (``LocalFederation``: mTLS, bearer tokens,
    ``computations = "approved"``, isolated workers); each session's plan is made and approved at every
    site (its compiled computations cached by content, as ``session plan`` does) and run by
    ``train_from_plan`` on ``create_backend("remote")``.

s/round: for A and B the wall time of each ``process.next``; for C and D the time between two rounds'
commits to the registry (everything a round costs, its checkpoint and registry row included). Median
over the rounds after the first of each session, then over the ``--reps`` repetitions, which run
interleaved (A B C D D+DP, then B C D D+DP A, ...). "start to end of round 1" runs each row once more in
a FRESH process, so imports count: A and B as ``python -m tests.benchmarks.tff_sim`` (until its first
``process.next`` returns), C as ``tffprod session run --spec FILE --backend local --json`` and D as
``tffprod session run --plan FILE --json``, until the registry's commit of round 1; for D also from the
start of ``tffprod session plan`` through ``tffprod site approve`` at each site (fresh processes too; the
first plan of a spec compiles, later ones find its computations in the plan cache). "warm": the modules'
bytecode in a cache of the run's own (``PYTHONPYCACHEPREFIX``), filled by the runs before; "cold": an
empty cache, which the run fills as it goes (as the first run after an install that compiled nothing).

Then: D / B at 1, 2, 4 and 8 sites (``--extra-reps`` each); B and D at 3 sites with the MLP
32-1024-1024-1 (1,084,417 parameters); D with site-level DP (``gaussian_fixed``, noise multiplier 1.0,
clip 1.0, noise at the coordinator: tffprod's DP-FedAvg, unweighted with TFF's DP aggregator) against D
without, both in the main loop; bytes per round per site
through each D site's gateway (its audit log: request and response bytes of every call, rounds 2..N);
where a C or D round goes (the registry's in-round time, the slowest site's part, the commit; CPU seconds
by process); the peak resident memory of every kind of process. Every process it starts, it stops; its
temporary folder is removed. ``--quick`` is a smoke run of every row (about 2 minutes); the defaults take
5-8 minutes on 2 cores.

The workload is ``vs_tff_task``; rows A and B are ``tff_sim``, C and D ``vs_tff_sessions``; the tables
are printed by ``vs_tff_report``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make ``tests.benchmarks`` importable
    sys.path.insert(0, str(REPO))

from tests.benchmarks import vs_tff_task  # noqa: E402
from tests.benchmarks.tff_sim import Simulation, peak_rss_mb  # noqa: E402
from tests.benchmarks.vs_tff_report import (MAIN_SITES, ROWS, print_breakdown, print_large, print_main,  # noqa: E402
                                             print_memory, print_scaling, seconds_per_round)
from tests.benchmarks.vs_tff_sessions import DP, Deployment, SessionRun  # noqa: E402

SITES = tuple(f"site-{i}" for i in range(8))


# ---------------------------------------------------------------- the machine


def machine_lines() -> list[str]:
    """Cores, CPU model, memory, load, versions, the tree's commit and the bytecode found installed."""
    import psutil
    import tensorflow as tf
    import tensorflow_federated as tff

    import tffprod

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True)
    changed = len(dirty.stdout.splitlines())
    return [
        f"machine: {os.cpu_count()} cores ({model}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}; load average at start {os.getloadavg()[0]:.2f}",
        f"versions: Python {platform.python_version()}, TensorFlow {tf.__version__}, TFF {tff.__version__}, "
        f"tffprod {tffprod.__version__} at {commit.stdout.strip() or '?'}"
        + (f" (+ uncommitted changes to {changed} tracked files)" if changed else ""),
        f"bytecode as installed: {installed_bytecode()}; PYTHONDONTWRITEBYTECODE "
        f"{'set' if os.environ.get('PYTHONDONTWRITEBYTECODE') else 'unset'} in this shell",
    ]


def installed_bytecode() -> str:
    """How many of TFF's, TF's and tffprod's modules have a compiled ``.pyc`` beside them."""
    import importlib.util

    parts = []
    for package in ("tensorflow_federated", "tensorflow", "tffprod"):
        root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
        sources = list(root.rglob("*.py"))
        cached = sum(Path(importlib.util.cache_from_source(str(p))).exists() for p in sources)
        parts.append(f"{package} {cached}/{len(sources)}")
    return ", ".join(parts)


# ---------------------------------------------------------------- start-up (fresh processes)


def child_env(root: Path, cache: Optional[Path] = None) -> dict[str, str]:
    """A fresh process's environment, its bytecode cache in ``cache`` (None: a new, empty folder)."""
    cache = cache or Path(tempfile.mkdtemp(prefix="pycache-cold-", dir=root))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", GRPC_VERBOSITY="ERROR", PYTHONPYCACHEPREFIX=str(cache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def sim_startup(mode: str, deployment: Deployment, env: dict[str, str]) -> dict:
    """A or B in a fresh ``python -m tests.benchmarks.tff_sim``: seconds to the end of round 1, memory."""
    sites = ",".join(SITES[:MAIN_SITES])
    command = [sys.executable, "-m", "tests.benchmarks.tff_sim", "--mode", mode, "--data",
               str(deployment.root / "data"), "--sites", sites, "--rounds", "1"]
    t0 = time.time()
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {out.returncode}: {out.stderr[-2000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return {"round1_s": report["round1_end"] - t0,
            "memory": {f"TFF sim ({mode}): python": (1, report["python_mb"], report["python_mb"]),
                       f"TFF sim ({mode}): worker_binary": (1, report["worker_mb"], report["worker_mb"])}}


def startups(deployment: Deployment, rounds: int, cold_rows: list[str], say: Callable[[str], None]) -> dict:
    """``{(row, "cold"|"warm"): {"round1_s", "memory"}}``.

    Cold runs first, each with an empty bytecode cache that it fills as it goes (as a first run after an
    install that compiled nothing would): the first of them fills the shared cache, which the warm runs
    then use (without a cold run, one unreported warm-up run of D fills it).
    """
    root = deployment.root
    shared = root / "pycache"

    def run(row: str, env: dict[str, str], setup_env: Optional[dict[str, str]] = None) -> dict:
        if row in "AB":
            return sim_startup("memory" if row == "A" else "files", deployment, env)
        return deployment.cli_run(row.lower(), SITES[:MAIN_SITES], rounds=rounds, env=env, setup_env=setup_env)

    out = {}
    for i, row in enumerate(cold_rows):
        out[(row, "cold")] = run(row, child_env(root, shared if i == 0 else None), setup_env=child_env(root))
        say(f"  start-up {row} cold: {out[(row, 'cold')]['round1_s']:.1f} s")
    if not cold_rows:
        run("D", child_env(root, shared))
    for row in ROWS:
        out[(row, "warm")] = run(row, child_env(root, shared))
        say(f"  start-up {row} warm: {out[(row, 'warm')]['round1_s']:.1f} s")
    return out


# ---------------------------------------------------------------- the measured loops


def sim_rep(sim: Simulation, rounds: int, clients: int) -> list[float]:
    """One repetition of A or B: ``rounds`` rounds; rounds 2..N."""
    return sim.rounds(rounds, clients)[1:]


def main_loop(sims: dict[str, Simulation], deployment: Deployment, *, rounds: int, reps: int,
              say: Callable[[str], None]) -> dict[str, list[Any]]:
    """The main table's repetitions, interleaved: rows A, B (round lists), C, D, D+DP (``SessionRun``)."""
    sites = SITES[:MAIN_SITES]
    steps: dict[str, Callable[[], Any]] = {
        "A": lambda: sim_rep(sims["A"], rounds, MAIN_SITES),
        "B": lambda: sim_rep(sims["B"], rounds, MAIN_SITES),
        "B'": lambda: sim_rep(sims["B'"], rounds, MAIN_SITES),
        "C": lambda: deployment.local_session(sites, rounds=rounds),
        "D": lambda: deployment.remote_session(sites, rounds=rounds),
        "D+DP": lambda: deployment.remote_session(sites, rounds=rounds, dp=DP),
    }
    keys = list(steps)
    results: dict[str, list[Any]] = {k: [] for k in keys}
    for rep in range(reps):
        for key in keys[rep % len(keys):] + keys[:rep % len(keys)]:
            result = steps[key]()
            results[key].append(result)
            say(f"  rep {rep + 1} {key:<5} {seconds_per_round(result):.3f} s/round"
                + (f" (session {result.wall_s:.1f} s)" if isinstance(result, SessionRun) else ""))
    return results


def scaling_loop(sim_b: Simulation, deployment: Deployment, counts: list[int], *, rounds: int, reps: int,
                 say: Callable[[str], None]) -> dict[int, dict[str, list[Any]]]:
    """B and D at each site count in ``counts``, ``reps`` times each, interleaved."""
    out: dict[int, dict[str, list[Any]]] = {n: {"B": [], "D": []} for n in counts}
    for rep in range(reps):
        for n in counts:
            out[n]["B"].append(sim_rep(sim_b, rounds, n))
            out[n]["D"].append(deployment.remote_session(SITES[:n], rounds=rounds))
            say(f"  rep {rep + 1} {n} site(s): B {seconds_per_round(out[n]['B'][-1]):.3f}, "
                f"D {seconds_per_round(out[n]['D'][-1]):.3f} s/round")
    return out


def large_loop(deployment: Deployment, *, rounds: int, reps: int, say: Callable[[str], None]) -> dict[str, Any]:
    """B and D at 3 sites with the 1.08M-parameter MLP, ``reps`` times each, interleaved."""
    sites = SITES[:MAIN_SITES]
    sim = Simulation("files", vs_tff_task.task_1m, [deployment.paths[s] for s in sites],
                     log_dir=deployment.root / "logs")
    out: dict[str, Any] = {"B": [], "D": []}
    try:
        for rep in range(reps):
            out["B"].append(sim_rep(sim, rounds, MAIN_SITES))
            out["D"].append(deployment.remote_session(sites, rounds=rounds, task="task_1m"))
            say(f"  rep {rep + 1} 1M parameters: B {seconds_per_round(out['B'][-1]):.3f}, "
                f"D {seconds_per_round(out['D'][-1]):.3f} s/round")
        out["worker_mb"] = peak_rss_mb(sim.worker.pid)
    finally:
        sim.close()
    return out


# ---------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds per session (the first is left out)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the main table and DP rows, interleaved")
    parser.add_argument("--extra-reps", type=int, default=3, help="repetitions of the scaling and 1M rows")
    parser.add_argument("--scaling", default="1,2,4,8", help="site counts for D / B ('' for none)")
    parser.add_argument("--cold", default="D,A", help="rows whose start-up is also measured cold ('' for none)")
    parser.add_argument("--no-large", action="store_true", help="leave out the 1M-parameter rows")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 3 rounds, 1 repetition, scaling at 2 sites, no cold start-up")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.reps, args.extra_reps, args.scaling, args.cold = 3, 1, 1, "2", ""
    if args.rounds < 2 or args.reps < 1 or args.extra_reps < 1:
        parser.error("--rounds must be at least 2, --reps and --extra-reps at least 1")
    return args


def say(message: str) -> None:
    print(message, flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    root = (args.workdir or Path(tempfile.mkdtemp(prefix="tffprod-bench-vs-tff-"))).resolve()
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(root / "tmp")  # what any process of the run leaves there goes with the run's folder
    tempfile.tempdir = None  # (re-read from TMPDIR)
    counts = sorted({int(n) for n in args.scaling.split(",") if n} - {MAIN_SITES})
    cold = [r for r in args.cold.split(",") if r]
    for line in machine_lines():
        say(line)
    say(f"workdir {root}")
    deployment = Deployment(root, SITES[:max([MAIN_SITES, *counts])])
    sims: dict[str, Simulation] = {}
    memory: dict[str, tuple[int, float, float]] = {}
    scaling: dict[int, dict[str, list[Any]]] = {}
    large: Optional[dict[str, Any]] = None
    try:
        t0 = time.monotonic()
        deployment.start()
        say(f"{len(deployment.sites)} site processes (gateway + isolated worker each, mTLS) up in "
            f"{time.monotonic() - t0:.1f} s")
        starts = startups(deployment, args.rounds, cold, say)
        for (row, temp), run in starts.items():
            if temp == "warm":
                memory.update({f"{row}: {role}": value for role, value in run["memory"].items()})
        t0 = time.monotonic()
        paths = [deployment.paths[s] for s in deployment.sites]
        sims = {key: Simulation(mode, vs_tff_task.task, paths, log_dir=root / "logs")
                for key, mode in (("A", "memory"), ("B", "files"), ("B'", "files-tffprod-reader"))}
        say(f"A and B built in this process in {time.monotonic() - t0:.1f} s; main table:")
        main_results = main_loop(sims, deployment, rounds=args.rounds, reps=args.reps, say=say)
        for key, sim in sims.items():
            mb = peak_rss_mb(sim.worker.pid)
            memory[f"{key}: TFF sim worker_binary, in the measured loop"] = (1, mb, mb)
        sites_now = deployment.site_memory(SITES[:MAIN_SITES])
        memory.update({f"D: {role}, after the {MAIN_SITES}-site rows": v for role, v in sites_now.items()})
        if counts:
            say("scaling:")
            scaling = scaling_loop(sims["B"], deployment, counts, rounds=args.rounds, reps=args.extra_reps, say=say)
        if not args.no_large:
            say("1M parameters:")
            large = large_loop(deployment, rounds=args.rounds, reps=args.extra_reps, say=say)
            memory["B 1M: TFF sim worker_binary"] = (1, large["worker_mb"], large["worker_mb"])
        memory.update({f"D: {role}, at the end (all rows)": v for role, v in deployment.site_memory().items()})
    finally:
        for sim in sims.values():
            sim.close()
        deployment.close()
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)

    print_main(main_results, starts, rounds=args.rounds, reps=args.reps)
    if scaling:
        print_scaling(scaling, main_results, args.extra_reps)
    if large:
        print_large(large, args.extra_reps)
    sessions = {"C": main_results["C"], "D": main_results["D"], "D+DP": main_results["D+DP"]}
    if scaling:
        sessions[f"D {max(scaling)} sites"] = scaling[max(scaling)]["D"]
    if large:
        sessions["D 1M"] = large["D"]
    print_breakdown(sessions)
    print_memory(memory)
    print(f"\nwhole run {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
