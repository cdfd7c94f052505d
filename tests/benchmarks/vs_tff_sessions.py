"""Rows C and D of ``bench_vs_tff``: real tffprod sessions of the workload, and what they cost.

:class:`Deployment` holds what every session needs: the data files of up to 8 sites, a registry that
knows them as local files (row C: ``create_backend("local")``, ``train`` from a ``SessionSpec``), and
the same sites as real ``tffprod site serve`` processes (``LocalFederation``: gateway + supervised,
isolated worker each, mTLS, ``computations = "approved"``) with a registry that reaches them (row D:
a plan made and approved at every site as the e2e tests do, then ``train_from_plan`` on the remote
backend). Sessions run in this process; :meth:`Deployment.cli_run` runs one as ``tffprod session run``
in a fresh process instead, for the start-up column.

A round's wall time here is the time between two consecutive rounds' commits to the registry (their
``recorded_at``): everything a round costs, the commit (accounting, checkpoint, registry row,
TensorBoard event) included. The registry's own ``duration_s`` leaves the commit out; both are kept.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tests.benchmarks import vs_tff_task
from tests.benchmarks.bench_backends import audit_traffic, cpu_by_role
from tests.benchmarks.tff_sim import peak_rss_mb

DP = {"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5,
      "noise_placement": "coordinator"}


def _epoch(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclasses.dataclass
class SessionRun:
    """One finished session: its registry rows and what was measured around it."""

    rows: list[dict]  # the registry's rounds, in order
    wall_s: float  # the whole train / train_from_plan call
    plan_s: float = float("nan")  # D: plan (compile or cache) + approval at every site
    compiled: bool = False  # D: its plan compiled its computations (not found in the plan cache)
    cpu: dict = dataclasses.field(default_factory=dict)  # CPU s per measured round, by role (cpu_by_role)
    wire: Optional[dict] = None  # D: per site and measured round, from the gateways' audit logs
    site_calls: list[float] = dataclasses.field(default_factory=list)  # D: each release, rounds 2..N, as timed
    # by the site's gateway (its audit log): the site's own part of a round, without the way there and back

    @property
    def commits(self) -> list[float]:
        return [_epoch(row["recorded_at"]) for row in self.rows]

    @property
    def per_round(self) -> list[float]:
        """Rounds 2..N: seconds from the previous round's commit to this one's."""
        c = self.commits
        return [b - a for a, b in zip(c, c[1:])]

    @property
    def in_round(self) -> list[float]:
        """Rounds 2..N: the registry's ``duration_s`` (sites, merge, finishing; not the commit)."""
        return [row["duration_s"] for row in self.rows[1:]]

    @property
    def site_part(self) -> list[float]:
        """Rounds 2..N: the slowest site's part (its ``up_to_merge`` as the coordinator timed it)."""
        return [max(p["duration_s"] for p in row["participants"]) for row in self.rows[1:]]


class PeakWatcher:
    """Samples the peak resident set (``VmHWM``) of a process and its descendants until stopped.

    Args:
        pid: the root process.
        role: names a process of the tree (``None``: not reported).
        interval_s: sampling period; ``VmHWM`` is a peak already, so only a process's last
            ``interval_s`` of life can be missed.
    """

    def __init__(self, pid: int, role: Callable[[Any], Optional[str]], interval_s: float = 0.2) -> None:
        self.peaks: dict[int, tuple[str, float]] = {}
        self._pid, self._role, self._interval = pid, role, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self._pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                role = self._role(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue
            mb = peak_rss_mb(proc.pid)
            if role is not None and mb == mb:
                self.peaks[proc.pid] = (role, mb)

    def by_role(self) -> dict[str, tuple[int, float, float]]:
        """Role -> (processes seen, largest peak, smallest peak), in MB."""
        return merge_roles([{role: (1, mb, mb)} for role, mb in self.peaks.values()])


def worker_role(proc: Any, *, site_prefix: str = "site worker_binary") -> Optional[str]:
    """A ``worker_binary``'s role from the log file it writes to (``coordinator.log``, ``site-NAME.log``)."""
    if proc.name() != "worker_binary":
        return None
    log = os.path.basename(os.readlink(f"/proc/{proc.pid}/fd/1"))
    return "coordinator worker_binary" if log.startswith("coordinator") else site_prefix


class Deployment:
    """Data, registries and site processes for C and D; ``close`` stops every process and closes both registries.

    Args:
        root: a fresh folder for everything (data, sites, registries, artifacts, logs).
        sites: site names, in order (site i holds ``vs_tff_task.examples(i)``).
    """

    def __init__(self, root: Path, sites: Sequence[str]) -> None:
        from tffprod.dev.local_sites import LocalFederation
        from tffprod.sessions import plan_cache
        from tffprod.sessions.runner import artifacts_dir_for

        self.root, self.sites = Path(root), list(sites)
        self.paths = vs_tff_task.prepare(self.root / "data", self.sites)
        schema = self.root / "data" / "schema.json"
        self.federation = LocalFederation(
            self.root / "fed", {site: {"train": {"path": path, "schema_file": schema}}
                                for site, path in self.paths.items()}, computations="approved")
        # Every registry file in one folder, so every session (in this process or not) finds the plan cache
        # where `tffprod session plan` fills it and `session run --plan` looks: beside the registry.
        self.registries = self.root / "registries"
        self.plan_cache = artifacts_dir_for(self.registries / "registry.db") / plan_cache.DIRECTORY
        self.local_registry: Any = None
        self.remote_registry: Any = None
        self._count = 0

    def start(self) -> "Deployment":
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.registries.mkdir(parents=True, exist_ok=True)
        self.federation.prepare()
        self.federation.start()
        self.remote_registry = self._remote_registry(self.registries / "remote.db")
        self.local_registry = self._local_registry(self.registries / "local.db")
        return self

    def _remote_registry(self, path: Path) -> Any:
        from tffprod.registry import Registry

        registry = Registry.open(path)
        self.federation.register(registry)
        return registry

    def _local_registry(self, path: Path) -> Any:
        from tffprod.data.register import register_dataset
        from tffprod.registry import Registry

        registry = Registry.open(path)
        for site, file in self.paths.items():
            register_dataset(registry, f"{site}/train", file, schema=vs_tff_task.SCHEMA)
        return registry

    def close(self) -> None:
        for registry in (self.local_registry, self.remote_registry):
            if registry is not None:
                registry.close()
        self.federation.stop()

    # ------------------------------------------------------------ specs and plans

    def spec(self, kind: str, sites: Sequence[str], *, rounds: int, task: str = "task",
             dp: Optional[dict] = None) -> Any:
        """A fresh session spec (a new name each time: a plan trains one session)."""
        from tffprod.sessions.spec import SessionSpec

        self._count += 1
        return SessionSpec.from_dict({
            "name": f"vs-tff-{kind}-{self._count}", "task": vs_tff_task.task_path(task),
            "datasets": [f"{site}/train" for site in sites], "rounds": rounds, "seed": 0,
            "min_sites": len(sites), "round_timeout_s": 600.0,
            "backend": "local" if kind == "c" else "remote", **({"dp": dp} if dp else {})})

    def approved_plan(self, spec: Any, registry: Any) -> tuple[Path, str]:
        """``session plan`` (compiled computations cached by content) and ``site approve`` at every site;
        the plan's path and id."""
        from tffprod.executors.approvals import approve_at_site
        from tffprod.executors.config import load_site_config
        from tffprod.sessions.approval import coordinator_identities, make_plan, write_plan
        from tffprod.sessions.planning import plan_session

        session = plan_session(spec, registry=registry)
        document = make_plan(session, coordinators=coordinator_identities(registry, session.training_sites),
                             cache_dir=self.plan_cache)
        path = write_plan(document, self.root / "plans" / f"{spec.name}.json")
        for site in session.training_sites:
            approve_at_site(path, load_site_config(self.federation.site_config_path(site)))
        return path, document["plan_id"]

    # ------------------------------------------------------------ sessions in this process

    def local_session(self, sites: Sequence[str], *, rounds: int, task: str = "task") -> SessionRun:
        """Row C: ``train`` on ``create_backend("local")``."""
        from tffprod.backends import create_backend
        from tffprod.sessions.runner import train

        spec = self.spec("c", sites, rounds=rounds, task=task)
        cpu: list[dict] = []
        backend = create_backend("local", log_dir=self.root / "logs" / spec.name)
        t0 = time.monotonic()
        result = train(spec, registry=self.local_registry, backend=backend,
                       progress=lambda _: cpu.append(cpu_by_role(self.federation, ())))
        return SessionRun(self.local_registry.list_rounds(result["id"]), time.monotonic() - t0,
                          cpu=_per_round(cpu))

    def remote_session(self, sites: Sequence[str], *, rounds: int, task: str = "task",
                       dp: Optional[dict] = None) -> SessionRun:
        """Row D: an approved plan, ``train_from_plan`` on ``create_backend("remote")``."""
        from tffprod.backends import create_backend
        from tffprod.sessions.runner import train_from_plan

        spec = self.spec("d", sites, rounds=rounds, task=task, dp=dp)
        cached = len(list(self.plan_cache.glob("*.json")))
        t0 = time.monotonic()
        plan, plan_id = self.approved_plan(spec, self.remote_registry)
        plan_s = time.monotonic() - t0
        compiled = len(list(self.plan_cache.glob("*.json"))) > cached
        cpu: list[dict] = []
        backend = create_backend("remote", registry=self.remote_registry, log_dir=self.root / "logs" / spec.name)
        t0 = time.monotonic()
        result = train_from_plan(plan, registry=self.remote_registry, backend=backend,
                                 progress=lambda _: cpu.append(cpu_by_role(self.federation, tuple(sites))))
        run = SessionRun(self.remote_registry.list_rounds(result["id"]), time.monotonic() - t0, plan_s=plan_s,
                         compiled=compiled, cpu=_per_round(cpu))
        commits = run.commits
        if len(commits) > 1:
            run.wire = audit_traffic(self.federation, tuple(sites), commits[0], commits[-1], rounds=len(commits) - 1)
        run.site_calls = self._release_seconds(sites, plan_id)
        return run

    def _release_seconds(self, sites: Sequence[str], plan_id: str) -> list[float]:
        """The gateways' durations of plan ``plan_id``'s training releases of rounds 2.. (their audit logs)."""
        from tffprod.executors.audit import AUDIT_FILE, read_audit_log

        out = []
        for site in sites:
            for record in read_audit_log(self.federation.site_config_path(site).parent / "state" / AUDIT_FILE):
                release = record.get("release") or {}
                mine = release.get("plan") == plan_id and release.get("role") == "train"
                if mine and (release.get("round") or 0) >= 2:
                    out.append(record["duration_s"])
        return out

    # ------------------------------------------------------------ a session as `tffprod session run`

    def cli_run(self, kind: str, sites: Sequence[str], *, rounds: int, env: dict,
                setup_env: Optional[dict] = None) -> dict:
        """Row C or D as ``tffprod`` commands, each a fresh process, with a registry file of its own.

        C: ``session run --spec FILE --backend local --json``. D: ``session plan --spec FILE --out PLAN``,
        ``site approve PLAN --config SITE.toml`` at each site, then ``session run --plan PLAN --json``.
        ``session run`` runs in ``env``, the commands before it in ``setup_env`` (default ``env``): so a cold
        ``session run`` does not find the bytecode that ``session plan`` left.

        Returns:
            ``round1_s``: seconds from starting ``session run`` to the registry's commit of round 1; for
            D also ``from_plan_s`` (the same from starting ``session plan``), ``plan_s`` (plan and
            approvals) and ``plan_cached`` (whether ``session plan`` found its computations in the plan
            cache); ``memory``: role -> (processes, peak MB) of the ``session run`` process tree.
        """
        from tffprod.registry import Registry
        from tffprod.sessions.spec import dump_spec

        spec = self.spec(kind, sites, rounds=rounds)
        db = self.registries / f"{spec.name}.db"
        (self._local_registry(db) if kind == "c" else self._remote_registry(db)).close()
        spec_file = self.root / "specs" / f"{spec.name}.toml"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        dump_spec(spec, spec_file)
        tffprod = str(Path(sys.executable).with_name("tffprod"))
        plan = self.root / "plans" / f"{spec.name}.json"
        steps = [] if kind == "c" else [
            [tffprod, "session", "plan", "--spec", str(spec_file), "--out", str(plan), "--registry", str(db), "--json"],
            *([tffprod, "site", "approve", str(plan), "--config", str(self.federation.site_config_path(site))]
              for site in sites)]
        run = [tffprod, "session", "run", *(["--spec", str(spec_file), "--backend", "local"] if kind == "c"
                                            else ["--plan", str(plan)]), "--registry", str(db), "--json"]
        log = self.root / "logs" / f"{spec.name}.stderr"
        cached = len(list(self.plan_cache.glob("*.json")))
        with open(log, "ab") as stderr:
            t_plan = time.time()
            for command in steps:
                subprocess.run(command, stdout=subprocess.DEVNULL, stderr=stderr, env=setup_env or env, cwd=self.root,
                               check=True, timeout=1200)
            t_run = time.time()
            proc = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=self.root)
            watcher = PeakWatcher(proc.pid, lambda p: "coordinator (tffprod session run)" if p.pid == proc.pid
                                  else worker_role(p, site_prefix="site worker_binary (local backend)"))
            try:
                with watcher:
                    out, _ = proc.communicate(timeout=1200)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(run)} exited with {proc.returncode}; see {log}")
        session_id = json.loads(out)["id"]
        with Registry.open(db) as registry:
            round1 = _epoch(registry.list_rounds(session_id)[0]["recorded_at"])
            recorded = _epoch(registry.get_session(session_id)["started_at"])
        result = {"round1_s": round1 - t_run, "recorded_s": recorded - t_run, "memory": watcher.by_role()}
        if steps:
            result.update(from_plan_s=round1 - t_plan, plan_s=t_run - t_plan,
                          plan_cached=len(list(self.plan_cache.glob("*.json"))) == cached)
        return result

    # ------------------------------------------------------------ the site processes

    def site_memory(self, sites: Optional[Sequence[str]] = None) -> dict[str, tuple[int, float, float]]:
        """Peak memory so far of the processes of ``sites`` (default all): gateway (``site serve``), worker,
        isolation relay."""
        pids = self.federation.pids()
        watchers = [PeakWatcher(pid, _site_role) for site, pid in pids.items()
                    if pid is not None and (sites is None or site in sites)]
        for watcher in watchers:
            watcher.sample()
        return merge_roles([watcher.by_role() for watcher in watchers])


def merge_roles(parts: Sequence[dict[str, tuple[int, float, float]]]) -> dict[str, tuple[int, float, float]]:
    """Role -> (processes, largest peak, smallest peak), summed over ``parts``."""
    out: dict[str, tuple[int, float, float]] = {}
    for part in parts:
        for role, (n, high, low) in part.items():
            had = out.get(role, (0, high, low))
            out[role] = (had[0] + n, max(had[1], high), min(had[2], low))
    return out


def _site_role(proc: Any) -> Optional[str]:
    if proc.name() == "worker_binary":
        return "site worker_binary"
    cmdline = proc.cmdline()
    if "tffprod.workers.isolation" in cmdline:
        return "site isolation relay"
    if "serve" in cmdline and "site" in cmdline:
        return "site gateway (tffprod site serve)"
    return None


def _per_round(cpu: list[dict]) -> dict:
    """CPU seconds per round from the end of round 1 to the end of the last round, by role."""
    if len(cpu) < 2:
        return {}
    return {role: (cpu[-1].get(role, 0.0) - cpu[0].get(role, 0.0)) / (len(cpu) - 1) for role in cpu[-1]}
