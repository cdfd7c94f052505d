"""Per-round cost of the three ways a round reaches a site: ``make bench``.

A benchmark, not a test: it asserts nothing about time, it prints numbers. Run from the
repository root as ``python -m tests.benchmarks.bench_backends`` (or as a script). Everything
runs in ONE process tree: this process is the coordinator; the site processes are real
``tffprod site serve`` processes started by ``LocalFederation`` (gateway + supervised worker each).

Backends compared, each driving the very same round loop (``tffprod.sessions.runner.train`` ->
``RoundRouter``: the per-site part on one thread per site, merge and ``after_merge`` on a
coordinator worker this process starts):

``local``
    ``LocalBackend``: one fresh ``worker_binary`` per site started by this process, plaintext
    loopback gRPC, datasets opened by absolute path.
``direct``
    ``DirectBackend`` below: plaintext channels straight to the workers that the federation's
    site processes supervise (the very processes each gateway forwards to), datasets referred
    to by absolute path. We chose these workers rather than starting our own (or reusing
    ``LocalBackend``) because they are the fair "no gateway" baseline: the same worker process,
    the same working folder (the site's ``state_dir``), the same flags and the same files; what
    the gateway would put on the wire after turning catalog names into paths is exactly the
    absolute path we send. So ``gateway - direct`` is the gateway hop alone (mTLS, token check,
    name rewriting, audit, the Python proxy's copies), while ``direct - local`` shows whether
    the workers themselves differ (it should be noise). A site's ``site.json`` names only the
    gateway, so the worker's address is read from its command line, found among the site
    process's children: the Unix socket its isolation relay serves (``--socket PATH``, the
    default), or ``--port=N`` for a worker with ``[worker] isolation = "none"``.
``gateway``
    ``RemoteBackend`` through each site's gateway: mTLS, bearer token, datasets by catalog name.

Configurations: the digits task (``tffprod.examples.digits``, 2,410 parameters) on the three
hospitals of ``digits.prepare``; a ~10M-parameter MLP (``tests.benchmarks.big_task``) on the
same three sites, one SGD step per round; and the digits task on 1, 2, 4 and 8 sites, each
holding one of 8 equal shards of all 1,797 digits (so every site does the same work and only
the fan-out grows). The first round (compilation) is reported apart and left out of medians.

Finally the gateway's raw throughput: a ~100 MB float32 ``CreateValue`` (upload) and the
``Compute`` that returns it (download), through a site's gateway and straight to its worker.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Mapping, Optional  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make ``tests.benchmarks`` importable
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from tffprod.backends.base import Backend, SiteTarget  # noqa: E402
from tffprod.workers.process import WorkerProcess  # noqa: E402

DIGITS_TASK = "tffprod.examples.digits:task"
BIG_TASK = "tests.benchmarks.big_task:task"
HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
SHARDS = tuple(f"shard-{i}" for i in range(8))
BACKENDS = ("local", "direct", "gateway")


# ---------------------------------------------------------------- the "no gateway" backend


class DirectBackend(Backend):
    """Plaintext channels straight to already-running site workers; a local coordinator worker.

    Args:
        worker_addresses: site name -> ``127.0.0.1:PORT`` of that site's own ``worker_binary``.
        log_dir: where the coordinator worker's log goes.
    """

    name = "direct"

    def __init__(self, worker_addresses: Mapping[str, str], *, log_dir: Path) -> None:
        super().__init__()  # _contexts and _coordinator, served by Backend.site_context / coordinator_context
        self._addresses = dict(worker_addresses)
        self._log_dir = Path(log_dir)
        self._channels: dict[str, Any] = {}
        self._coordinator_worker: Optional[WorkerProcess] = None

    def _open(self, sites: list[SiteTarget]) -> None:
        from tffprod.backends.contexts import channel_context, insecure_channel

        try:
            if self._coordinator is None:
                self._coordinator_worker = WorkerProcess(name="coordinator",
                                                         log_path=self._log_dir / "coordinator.log").start()
                self._coordinator = channel_context(insecure_channel(self._coordinator_worker.address))
            for site in sites:
                if site.name not in self._contexts:
                    channel = insecure_channel(self._addresses[site.name])
                    self._channels[site.name] = channel
                    self._contexts[site.name] = channel_context(channel)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._contexts.clear()
        if self._coordinator_worker is not None:
            self._coordinator_worker.stop()
        self._coordinator_worker = None
        self._coordinator = None

    def reference(self, dataset: Mapping[str, Any]) -> str:
        return str(Path(dataset["path"]).resolve())  # what the gateway would have rewritten the name into


def site_worker_addresses(federation: Any) -> dict[str, str]:
    """Site -> address of the ``worker_binary`` its ``tffprod site serve`` process supervises."""
    import psutil

    out = {}
    for site, pid in federation.pids().items():
        for child in psutil.Process(pid).children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if "tffprod.workers.isolation" in cmdline:  # an isolated worker: its relay's Unix socket
                out[site] = f"unix:{cmdline[cmdline.index('--socket') + 1]}"
            elif cmdline and cmdline[0].endswith("worker_binary") and site not in out:
                port = next(arg.split("=", 1)[1] for arg in cmdline if arg.startswith("--port="))
                out[site] = f"127.0.0.1:{port}"
        if site not in out:
            raise RuntimeError(f"site {site} (pid {pid}) has no worker_binary child")
    return out


# ---------------------------------------------------------------- data


def prepare_data(root: Path) -> dict[str, dict[str, Path]]:
    """``{site: {dataset name: path}}`` for the hospitals (train, small) and the 8 shards (train)."""
    from sklearn.datasets import load_digits

    from tffprod.data.files import write_tfrecord
    from tffprod.examples import digits
    from tests.benchmarks import big_task

    files: dict[str, dict[str, Path]] = {}
    for site, parts in digits.prepare(root / "digits", sites=HOSPITALS, seed=0).items():
        files[site] = {"train": parts["train"]}
    for site, path in big_task.prepare(root / "big", HOSPITALS, seed=0).items():
        files[site]["small"] = path
    images, labels = load_digits(return_X_y=True)
    pixels = (images / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(labels))
    for site, part in zip(SHARDS, np.array_split(order, len(SHARDS))):
        path = root / "shards" / site / "train.tfrecord"
        write_tfrecord(path, ({"pixels": pixels[i], "digit": int(labels[i])} for i in part), digits.SCHEMA)
        files[site] = {"train": path}
    return files


# ---------------------------------------------------------------- one session


@dataclasses.dataclass
class Config:
    model: str  # "digits" | "mlp-10m"
    data: str  # "hospitals" (digits.prepare's three sites) | "shards" (1/8 of all digits per site)
    task: str
    dataset: str  # catalog name at every site
    sites: tuple[str, ...]
    rounds: int


@dataclasses.dataclass
class Result:
    config: Config
    backend: str
    first_s: float
    rounds_s: list[float]  # rounds 2..N (RoundReport.duration_s)
    slowest_site_s: list[float]  # per measured round: the slowest site's up_to_merge
    wall_s: float  # the whole train() call: build, compile, rounds, saving the model
    load: float  # the machine's 1-minute load average when the session ended (other work skews times)
    wire: Optional[dict] = None  # gateway only: per site and measured round, from the sites' audit logs
    cpu: dict = dataclasses.field(default_factory=dict)  # CPU s per measured round by role (cpu_by_role)
    error: Optional[str] = None

    @property
    def median(self) -> float:
        return statistics.median(self.rounds_s) if self.rounds_s else float("nan")

    @property
    def median_site(self) -> float:
        return statistics.median(self.slowest_site_s) if self.slowest_site_s else float("nan")

    @property
    def median_coordinator(self) -> float:
        """Round time outside the slowest site's part: merging and ``after_merge`` at the coordinator."""
        rest = [r - s for r, s in zip(self.rounds_s, self.slowest_site_s)]
        return statistics.median(rest) if rest else float("nan")


def run_session(config: Config, backend_kind: str, *, root: Path, files: Mapping[str, Mapping[str, Path]],
                federation: Any, workers: Mapping[str, str]) -> Result:
    from tffprod.backends import create_backend
    from tffprod.backends.local import LocalBackend
    from tffprod.data.register import register_dataset
    from tffprod.examples.digits import SCHEMA
    from tffprod.registry import Registry
    from tffprod.sessions.runner import train
    from tffprod.sessions.spec import SessionSpec

    tag = f"{config.model}-{len(config.sites)}-{backend_kind}"
    log_dir = root / "logs" / tag
    reports: list[Any] = []
    stamps: list[float] = []  # wall clock at each progress callback: round k ends at stamps[k-1]

    cpu: list[dict[str, float]] = []  # CPU seconds by process group, at each progress callback

    def progress(report: Any) -> None:
        reports.append(report)
        stamps.append(time.time())
        cpu.append(cpu_by_role(federation, config.sites if backend_kind != "local" else ()))

    backend: Optional[Backend] = None
    t0 = time.monotonic()
    error = None
    with Registry.open(root / "registries" / f"{tag}.db") as registry:
        try:
            if backend_kind == "gateway":
                federation.register(registry)  # adds every site and imports its catalog (site://...)
                backend = create_backend("remote", registry=registry, log_dir=log_dir)
            else:
                for site in config.sites:
                    register_dataset(registry, f"{site}/{config.dataset}", files[site][config.dataset],
                                     schema=SCHEMA)
                backend = (LocalBackend(log_dir=log_dir) if backend_kind == "local"
                           else DirectBackend(workers, log_dir=log_dir))
            spec = SessionSpec.from_dict({
                "name": f"bench-{tag}", "task": config.task,
                "datasets": [f"{site}/{config.dataset}" for site in config.sites],
                "rounds": config.rounds, "seed": 0, "round_timeout_s": 900.0,
                "backend": "remote" if backend_kind == "gateway" else "local",
            })
            train(spec, registry=registry, backend=backend, progress=progress,
                  artifacts_dir=root / "artifacts")
        except Exception as e:  # report it in the table, keep measuring the rest
            error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        finally:
            if backend is not None:
                backend.close()
    wall = time.monotonic() - t0
    for report in reports:
        bad = [p for p in report.sites if p["status"] != "ok"]
        if bad and error is None:
            error = f"round {report.round_num}: {bad[0]['site']} {bad[0]['status']} ({bad[0]['error']})"
    measured = reports[1:]
    cpu_per_round = {}
    if len(cpu) > 1:  # rounds 2..N: from the end of round 1 to the end of the last round
        cpu_per_round = {role: (cpu[-1].get(role, 0.0) - cpu[0].get(role, 0.0)) / (len(cpu) - 1)
                         for role in cpu[-1]}
    wire = None
    if backend_kind == "gateway" and len(stamps) > 1:
        wire = audit_traffic(federation, config.sites, stamps[0], stamps[-1], rounds=len(stamps) - 1)
    return Result(
        config=config, backend=backend_kind,
        first_s=reports[0].duration_s if reports else float("nan"),
        rounds_s=[r.duration_s for r in measured],
        slowest_site_s=[max(p["duration_s"] for p in r.sites) for r in measured],
        wall_s=wall, load=os.getloadavg()[0], wire=wire, cpu=cpu_per_round, error=error,
    )


def cpu_by_role(federation: Any, sites: tuple[str, ...]) -> dict[str, float]:
    """Cumulative CPU seconds (user + system) of the processes a round uses, grouped by role.

    ``coordinator``: this process (TFF's Python side: tracing, (de)serializing, gRPC client);
    ``coord-worker``: the coordinator's ``worker_binary`` (merge, ``after_merge``);
    ``site-workers``: the workers that run the per-site part (LocalBackend's own, or the
    federation's for direct and gateway); ``gateways``: the session's ``tffprod site serve``
    processes (gateway, audit, supervisor; their worker is counted under ``site-workers``).
    Our own ``worker_binary`` children are LocalBackend's site workers plus one coordinator
    worker, which every backend starts last (so it is the youngest).
    """
    import psutil

    def seconds(proc: psutil.Process) -> float:
        t = proc.cpu_times()
        return t.user + t.system

    me = psutil.Process()
    out = {"coordinator": seconds(me), "coord-worker": 0.0, "site-workers": 0.0, "gateways": 0.0}
    ours = []
    for child in me.children():
        try:
            if child.cmdline()[0].endswith("worker_binary"):
                ours.append(child)
        except (psutil.NoSuchProcess, IndexError):
            continue
    if ours:
        youngest = max(ours, key=lambda p: p.create_time())
        for proc in ours:
            out["coord-worker" if proc is youngest else "site-workers"] += seconds(proc)
    pids = federation.pids()
    for site in sites:
        try:
            gateway = psutil.Process(pids[site])
            out["gateways"] += seconds(gateway)
            for child in gateway.children(recursive=True):
                out["site-workers"] += seconds(child)
        except (KeyError, psutil.NoSuchProcess):
            continue
    return out


def _audit_records(federation: Any, site: str, since: float, until: float) -> list[dict]:
    """The site gateway's audit records of calls that ENDED in ``(since, until]`` (epoch seconds)."""
    import datetime

    from tffprod.executors.audit import read_audit_log
    from tffprod.executors.audit import AUDIT_FILE

    path = federation.site_config_path(site).parent / "state" / AUDIT_FILE
    out = []
    for record in read_audit_log(path):
        ended = datetime.datetime.fromisoformat(record["time"]).timestamp()
        if since < ended <= until:
            out.append(record)
    return out


def audit_traffic(federation: Any, sites: tuple[str, ...], since: float, until: float, *, rounds: int) -> dict:
    """Mean bytes into and out of ONE site's gateway per round, and its executor calls per round."""
    records = [r for site in sites for r in _audit_records(federation, site, since, until)]
    per = len(sites) * rounds
    return {"mb_in": sum(r["bytes_in"] for r in records) / 1e6 / per,
            "mb_out": sum(r["bytes_out"] for r in records) / 1e6 / per,
            "calls": len(records) / per}


# ---------------------------------------------------------------- raw throughput


def measure_throughput(root: Path, federation: Any, workers: Mapping[str, str], site: str, *,
                       payload_mb: float, reps: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per ``CreateValue`` (upload) and ``Compute`` (download) of one big float32 array."""
    import grpc
    import tensorflow_federated as tff
    from tensorflow_federated.python.core.impl.executors import value_serialization

    from tffprod.sites.connection import GRPC_OPTIONS, SiteConnection
    from tffprod.executors.gateway import EXECUTOR_SERVICE
    from tffprod.protocol.protos import computation_pb2, executor_pb2
    from tffprod.registry import Registry

    n = int(payload_mb * 1e6 // 4)
    array = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    value, _ = value_serialization.serialize_value(array, tff.TensorType(np.float32, [n]))

    def call(channel: Any, method: str, request: Any) -> bytes:
        raw = request if isinstance(request, bytes) else request.SerializeToString()
        return channel.unary_unary(f"/{EXECUTOR_SERVICE}/{method}")(raw, timeout=600)

    get_executor = executor_pb2.GetExecutorRequest(cardinalities=[executor_pb2.Cardinality(
        placement=computation_pb2.Placement(uri="clients"), cardinality=1)])

    def once(channel: Any) -> tuple[float, float]:
        executor = executor_pb2.GetExecutorResponse.FromString(call(channel, "GetExecutor", get_executor)).executor
        try:
            request = executor_pb2.CreateValueRequest(executor=executor, value=value).SerializeToString()
            t0 = time.perf_counter()
            ref = executor_pb2.CreateValueResponse.FromString(call(channel, "CreateValue", request)).value_ref
            t1 = time.perf_counter()
            raw = call(channel, "Compute", executor_pb2.ComputeRequest(executor=executor, value_ref=ref))
            t2 = time.perf_counter()
            if len(raw) < array.nbytes:
                raise RuntimeError(f"Compute returned {len(raw)} bytes, expected at least {array.nbytes}")
            call(channel, "Dispose", executor_pb2.DisposeRequest(executor=executor, value_ref=[ref]))
        finally:
            call(channel, "DisposeExecutor", executor_pb2.DisposeExecutorRequest(executor=executor))
        return t1 - t0, t2 - t1

    times: dict[str, dict[str, list[float]]] = {k: {"upload": [], "download": []} for k in ("direct", "gateway")}
    times["inside"] = {"upload": [], "download": []}  # gateway handler time (audit log): parse + forward + back
    with Registry.open(root / "registries" / "throughput.db") as registry:
        federation.register(registry)
        channels = {"direct": grpc.insecure_channel(workers[site], options=GRPC_OPTIONS),
                    "gateway": SiteConnection.from_registry(registry.get_site(site)).channel()}
        try:
            for channel in channels.values():  # warm-up: connect, TLS handshake
                once(channel)
            for _ in range(reps):
                for kind, channel in channels.items():
                    since = time.time()
                    up, down = once(channel)
                    times[kind]["upload"].append(up)
                    times[kind]["download"].append(down)
                    if kind == "gateway":
                        records = _audit_records(federation, site, since, time.time() + 1.0)
                        for op, method, field in (("upload", "CreateValue", "bytes_in"),
                                                  ("download", "Compute", "bytes_out")):
                            times["inside"][op] += [r["duration_s"] for r in records if r["method"].endswith(
                                f"/{method}") and r[field] >= array.nbytes]
        finally:
            for channel in channels.values():
                channel.close()
    times["_bytes"] = {"payload": [float(array.nbytes)]}
    return times


# ---------------------------------------------------------------- printing


def _fmt(x: float) -> str:
    return "   -  " if x != x else f"{x:6.3f}"


def _ratio(a: float, b: float) -> str:
    return "  -  " if a != a or b != b or b == 0 else f"{a / b:5.2f}"


def print_tables(results: list[Result], params: Mapping[str, int]) -> None:
    keys = list(dict.fromkeys((r.config.model, r.config.data, len(r.config.sites)) for r in results))
    by = {(r.config.model, r.config.data, len(r.config.sites), r.backend): r for r in results}
    print()
    print("Median seconds per round (round 1 = compilation left out; rounds measured in brackets)")
    print(f"{'model':<9} {'params':>10} {'data':<9} {'sites':>5} | {'local':>6} {'direct':>6} {'gateway':>7} |"
          f" {'gw/direct':>9} {'gw/local':>8}")
    print("-" * 86)
    for model, data, n in keys:
        cells = {b: by.get((model, data, n, b)) for b in BACKENDS}
        med = {b: (c.median if c and not c.error else float("nan")) for b, c in cells.items()}
        measured = max((len(c.rounds_s) for c in cells.values() if c), default=0)
        print(f"{model:<9} {params[model]:>10,} {data:<9} {n:>5} | {_fmt(med['local'])} {_fmt(med['direct'])}"
              f" {_fmt(med['gateway']):>7} | {_ratio(med['gateway'], med['direct']):>9}"
              f" {_ratio(med['gateway'], med['local']):>8}   [{measured}]")
    print()
    print("Where a round goes. Wall (medians, s): round; slowest site's up_to_merge; the rest (merge + after_merge"
          " at the\ncoordinator). CPU seconds per measured round (means) of: this process (TFF's Python side),"
          " the coordinator's\nworker, the site workers (sum), the site gateway processes (sum). Then: first round"
          " (compilation), the whole\ntrain() call (build, compile, rounds, save), 1-min load average at its end.")
    print(f"{'model':<9} {'sites':>5} {'backend':<8} | {'round':>6} {'site':>6} {'coord':>6} | {'py':>6} {'c-wkr':>6}"
          f" {'s-wkrs':>6} {'gateway':>7} | {'first':>6} {'session':>7} {'load':>5}")
    print("-" * 110)
    for r in results:
        c = {k: r.cpu.get(k, float("nan")) for k in ("coordinator", "coord-worker", "site-workers", "gateways")}
        gateways = c["gateways"] if r.backend != "local" else float("nan")
        print(f"{r.config.model:<9} {len(r.config.sites):>5} {r.backend:<8} | {_fmt(r.median)} {_fmt(r.median_site)}"
              f" {_fmt(r.median_coordinator)} | {_fmt(c['coordinator'])} {_fmt(c['coord-worker'])}"
              f" {_fmt(c['site-workers'])} {_fmt(gateways):>7} | {_fmt(r.first_s)} {r.wall_s:7.1f} {r.load:5.1f}"
              + (f"  ERROR {r.error}" if r.error else ""))
    print()
    print("Per-round durations (s), rounds 2..N:")
    for r in results:
        print(f"  {r.config.model:<9} {len(r.config.sites)} {r.backend:<8} " + " ".join(f"{x:.2f}" for x in r.rounds_s))
    wired = [r for r in results if r.wire]
    if wired:
        print()
        print("Through each site's gateway per measured round (its audit log; means over sites):")
        for r in wired:
            w = r.wire
            print(f"  {r.config.model:<9} {len(r.config.sites)} site(s): {w['mb_in']:8.2f} MB in,"
                  f" {w['mb_out']:8.2f} MB out, {w['calls']:5.1f} executor calls")


def print_throughput(times: Mapping[str, Mapping[str, list[float]]], site: str) -> None:
    size = times["_bytes"]["payload"][0]
    print()
    print(f"Raw throughput, one {size / 1e6:.0f} MB float32 array, site {site} "
          f"(median of {len(times['direct']['upload'])}; MB = 1e6 bytes)")
    for op, what in (("upload", "CreateValue"), ("download", "Compute")):
        d = statistics.median(times["direct"][op])
        g = statistics.median(times["gateway"][op])
        print(f"  {op:<8} ({what:<11}): direct {d:6.3f} s = {size / 1e6 / d:7.1f} MB/s | "
              f"gateway (mTLS+token) {g:6.3f} s = {size / 1e6 / g:7.1f} MB/s | gateway/direct {g / d:5.2f}x "
              f"| +{(g - d) / (size / 1e6) * 1e3:.2f} ms/MB")
        if times["inside"][op]:
            inside = statistics.median(times["inside"][op])
            print(f"  {'':<8}  of the gateway's {g:.3f} s: {inside:.3f} s inside its handler (check/rewrite, "
                  f"forward to the worker and back), {g - inside:.3f} s outside it (the mTLS hop into the "
                  f"gateway process)")


# ---------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-rounds", type=int, default=6, help="rounds per digits session (first is left out)")
    parser.add_argument("--big-rounds", type=int, default=4, help="rounds per 10M-MLP session (first is left out)")
    parser.add_argument("--scaling", default="1,2,4,8", help="site counts of the digits scaling rows ('' for none)")
    parser.add_argument("--scaling-backends", default="local,direct,gateway")
    parser.add_argument("--no-big", action="store_true", help="leave out the 10M-parameter MLP")
    parser.add_argument("--payload-mb", type=float, default=100.0, help="raw throughput payload ('0' for none)")
    parser.add_argument("--reps", type=int, default=3, help="raw throughput repetitions")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder, removed)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    root = (args.workdir or Path(tempfile.mkdtemp(prefix="tffprod-bench-"))).resolve()
    (root / "registries").mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    import tensorflow as tf
    import tensorflow_federated as tff

    from tffprod.dev.local_sites import LocalFederation
    from tests.benchmarks import big_task

    print(f"tffprod backend benchmark: Python {platform.python_version()}, TF {tf.__version__}, "
          f"TFF {tff.__version__}, {os.cpu_count()} CPU(s); importing TF+TFF took {time.monotonic() - t:.1f} s; "
          f"workdir {root}; load average {os.getloadavg()[0]:.1f}", flush=True)

    files = prepare_data(root)
    datasets = {site: {name: {"path": path, "task": DIGITS_TASK} for name, path in tables.items()}
                for site, tables in files.items()}
    configs = [Config("digits", "hospitals", DIGITS_TASK, "train", HOSPITALS, args.digits_rounds)]
    if not args.no_big:
        configs.append(Config("mlp-10m", "hospitals", BIG_TASK, "small", HOSPITALS, args.big_rounds))
    plan = [(c, b) for c in configs for b in BACKENDS]
    scaling_backends = [b for b in args.scaling_backends.split(",") if b]
    for n in [int(x) for x in args.scaling.split(",") if x]:
        plan += [(Config("digits", "shards", DIGITS_TASK, "train", SHARDS[:n], args.digits_rounds), b)
                 for b in scaling_backends]
    params = {"digits": 64 * 32 + 32 + 32 * 10 + 10, "mlp-10m": big_task.num_parameters()}

    federation = LocalFederation(root / "federation", datasets, computations="any")
    results: list[Result] = []
    throughput = None
    try:
        federation.prepare()
        t = time.monotonic()
        federation.start()
        workers = site_worker_addresses(federation)
        print(f"{len(federation.addresses)} site processes (gateway + worker each) ready in "
              f"{time.monotonic() - t:.1f} s", flush=True)
        for config, backend_kind in plan:
            result = run_session(config, backend_kind, root=root, files=files, federation=federation,
                                 workers=workers)
            results.append(result)
            print(f"  {config.model:<8} {len(config.sites)} site(s) {backend_kind:<8}"
                  f" median {result.median:.3f} s/round"
                  f" (first {result.first_s:.2f} s, session {result.wall_s:.1f} s)"
                  + (f" ERROR {result.error}" if result.error else ""), flush=True)
        if args.payload_mb > 0:
            throughput = measure_throughput(root, federation, workers, HOSPITALS[0],
                                            payload_mb=args.payload_mb, reps=args.reps)
    finally:
        federation.stop()
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print_tables(results, params)
    if throughput:
        print_throughput(throughput, HOSPITALS[0])
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
