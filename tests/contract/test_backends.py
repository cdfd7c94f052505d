"""Every backend (``tffprod.backends.BACKENDS``) passes the same cases: where a site's part runs.

Each case runs once per backend name, through the plug-point only (``create_backend(name,
registry=...)``, ``open``, ``run_site``, ``reference``, ``reconnect``, ``coordinator_context``,
``close``), with real TFF and real processes: "local" starts its own workers, "remote" reaches a
real federation (``tffprod site serve`` processes, mTLS) started once for the module. A new backend
is one entry in ``BACKENDS`` plus a ``Case`` below; these cases then run for it too.

The computation is a small custom federated computation over ``{str}@CLIENTS`` dataset references
(each client opens its dataset with ``tffprod.read_examples`` and returns its number of examples and
the sum of its labels; both are summed over clients), split with TFF's
``compile_to_mergeable_comp_form`` as ``run_federated`` does. The oracle is the data files read
independently (``tffprod.data.files.iter_examples``) and the registered ``num_examples``, so both
backends are held to the same values.

Where the backends differ (by design; the cases pin it):

* Registry rows. Remote reads sites' catalog rows (``site://SITE/NAME``), local the registered
  file paths. The local backend refuses a ``site://`` row, so one registry cannot hold the rows of
  both for the same ``SITE/NAME``: each backend gets the registry it runs with (the federation's,
  and one with the same files registered by path); their rows agree on site, name, content hash and
  ``num_examples`` (checked).
* ``reference(row)``: local names the resolved file path (the catalog name under a plan, as a
  simulated site maps names to files); remote always the catalog name, whatever the row's path.
* Processes: local starts a worker per site and one for the coordinator; remote only the
  coordinator's (the sites' processes are not the backend's, and outlive it).
* ``reconnect``: a no-op for local (its contexts never go stale); remote opens a fresh channel.
* Plans: a real site serves either any computation (``computations = "any"``, the executor
  protocol: cases 1-4) or only releases of approved plans (``"approved"``: case 5), never both;
  so the remote half of case 5 starts a federation of its own whose sites approve the plan with
  ``tffprod site approve`` (``approve_at_site``). The local backend's simulated sites approve it by
  themselves.

E2E (real TFF and processes) but collected with the TF-free contract suites: nothing TF-related is
imported at module level.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import psutil
import pytest

from tffprod.backends import BACKENDS, SiteTarget, create_backend
from tffprod.backends.base import Backend
from tffprod.errors import DatasetError
from tffprod.examples import digits
from tests.e2e.conftest import running_federation, worker_children

pytestmark = pytest.mark.e2e

TASK = "tffprod.examples.digits:task"
SITES = digits.SITES[:2]
SPLITS = ("train", "test")
REFS = [f"{site}/{split}" for site in SITES for split in SPLITS]
TIMEOUT_S = 300.0


# --- processes ----------------------------------------------------------------------------------


def _ended(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(autouse=True)
def no_leaked_workers(federation):
    """Every case ends every worker it started (the module federation's sites, set up first, excepted)."""
    before = {p.pid for p in worker_children()}
    yield
    leaked = [p.pid for p in worker_children() if p.pid not in before]
    assert not leaked, f"test left worker processes running: {leaked}"


# --- data, registries, the federation ------------------------------------------------------------


def _site_datasets(paths: Mapping[str, Mapping[str, Path]]) -> dict:
    """The sites' ``[datasets]`` tables for ``running_federation``."""
    return {site: {split: {"path": paths[site][split], "task": TASK} for split in SPLITS} for site in SITES}


@pytest.fixture(scope="module")
def federation(tmp_path_factory, digits_data):
    """Real sites serving any computation (the executor protocol), and the registry that knows them."""
    with running_federation(tmp_path_factory.mktemp("backends-any"), _site_datasets(digits_data)) as (fed, registry):
        yield fed, registry


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory, digits_data):
    """The same files registered by path, under the same ``SITE/NAME`` refs."""
    from tffprod.data.register import register_dataset
    from tffprod.registry import Registry

    with Registry.open(tmp_path_factory.mktemp("backends-local") / "local.db") as registry:
        for site in SITES:
            for split in SPLITS:
                register_dataset(registry, f"{site}/{split}", digits_data[site][split], schema=digits.SCHEMA)
        yield registry


@pytest.fixture(scope="module")
def expected(digits_data, federation, local_registry) -> dict[str, tuple[int, int]]:
    """Per site: (examples, sum of labels), read from the files without TensorFlow; the registered
    ``num_examples`` of both registries agree with the count."""
    from tffprod.data.files import iter_examples

    out = {}
    for site in SITES:
        examples = [e for split in SPLITS for e in iter_examples(digits_data[site][split], "tfrecord", digits.SCHEMA)]
        out[site] = (len(examples), sum(int(e["digit"]) for e in examples))
    for registry in (federation[1], local_registry):
        counts = {site: sum(int(registry.get_dataset(f"{site}/{split}")["num_examples"]) for split in SPLITS)
                  for site in SITES}
        assert counts == {site: count for site, (count, _) in out.items()}
    remote_rows = {r: federation[1].get_dataset(r) for r in REFS}
    local_rows = {r: local_registry.get_dataset(r) for r in REFS}
    for ref in REFS:
        for key in ("site", "name", "content_hash", "num_examples"):
            assert remote_rows[ref][key] == local_rows[ref][key], (ref, key)
    return out


def _totals(expected: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    return sum(c for c, _ in expected.values()), sum(s for _, s in expected.values())


@pytest.fixture(scope="module")
def computation():
    """``(comp, form)``: examples and label sum over ``{str}@CLIENTS`` references, and its mergeable form."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_federated as tff

    from tffprod import read_examples

    @tff.tensorflow.computation(np.str_)
    def count_and_sum(ref):
        zero = (tf.constant(0, tf.int64), tf.constant(0, tf.int64))
        return read_examples(ref, digits.SCHEMA, "tfrecord").reduce(
            zero, lambda acc, row: (acc[0] + 1, acc[1] + row["digit"]))

    @tff.federated_computation(tff.FederatedType(np.str_, tff.CLIENTS))
    def examples_and_label_sum(refs):
        per_client = tff.federated_map(count_and_sum, refs)
        return tff.federated_sum(per_client[0]), tff.federated_sum(per_client[1])

    return examples_and_label_sum, tff.backends.native.compile_to_mergeable_comp_form(examples_and_label_sum)


# --- one backend and what it runs with -----------------------------------------------------------


@dataclasses.dataclass
class Case:
    """A backend name, the registry it runs with, and what ``open`` starts for it."""

    name: str
    registry: Any
    workers_per_open: int  # worker processes ``open`` starts (and ``close`` must end)
    site_pids: tuple[int, ...] = ()  # processes that are not the backend's and outlive it

    def create(self, log_dir: Optional[Path] = None, registry: Any = None) -> Backend:
        return create_backend(self.name, registry=self.registry if registry is None else registry, log_dir=log_dir)

    def rows(self, registry: Any = None) -> dict[str, list[Mapping[str, Any]]]:
        registry = self.registry if registry is None else registry
        return {site: [registry.get_dataset(f"{site}/{split}") for split in SPLITS] for site in SITES}

    def targets(self, registry: Any = None) -> list[SiteTarget]:
        return [SiteTarget(site, tuple(rows)) for site, rows in self.rows(registry).items()]


@pytest.fixture(params=BACKENDS)
def case(request, federation, local_registry) -> Case:
    fed, remote_registry = federation
    if request.param == "local":
        return Case("local", local_registry, workers_per_open=len(SITES) + 1)
    if request.param == "remote":
        return Case("remote", remote_registry, workers_per_open=1, site_pids=tuple(fed.pids().values()))
    raise AssertionError(f"backend {request.param!r} has no contract case: add one to this fixture")


def site_part(backend: Backend, computation: Any, site: str, rows: list[Mapping[str, Any]]) -> Any:
    """``computation`` (a per-site part) at ``site`` on its datasets, named as ``backend`` names them."""
    return backend.run_site(site, computation, None, [backend.reference(row) for row in rows])


def plain(value: Any) -> tuple[int, ...]:
    """A per-site or merged result (a tuple, or a TFF struct under a plan) as plain ints."""
    return tuple(int(v) for v in value)


# --- the cases ------------------------------------------------------------------------------------


def test_a_computations_per_site_part_gives_each_sites_count(case, computation, expected, tmp_path):
    """Case 1: ``run_site`` of the per-site part (``up_to_merge``) at each site: the registered
    ``num_examples`` and the files' label sum, the same on every backend."""
    _, form = computation
    with case.create(tmp_path / "logs") as backend:
        backend.open(case.targets())
        parts = {site: plain(site_part(backend, form.up_to_merge, site, rows)) for site, rows in case.rows().items()}
    assert parts == expected


def test_reference_names_a_dataset_as_its_site_opens_it(case, federation, local_registry):
    """Case 2: ``reference(row)``; that the computation at the site opens it is case 1.

    Local: the resolved file path, and a ``site://`` row (a dataset that lives only at its site) is
    refused with a one-line DatasetError. Remote: the catalog name, whatever the row's path (a
    site maps names to its files), so a ``site://`` row and a path row alike.
    """
    site_row = federation[1].get_dataset("hospital-a/train")
    path_row = local_registry.get_dataset("hospital-a/train")
    assert site_row["path"] == "site://hospital-a/train" and Path(path_row["path"]).is_file()
    backend = case.create()  # reference needs no open
    try:
        for rows in case.rows().values():
            for row in rows:
                ref = backend.reference(row)
                if case.name == "local":
                    assert ref == str(Path(row["path"]).resolve()) and Path(ref).is_file()
                else:
                    assert ref == row["name"]
        if case.name == "local":
            with pytest.raises(DatasetError) as info:
                backend.reference(site_row)
            message = str(info.value)
            assert "\n" not in message
            assert "hospital-a/train" in message and "lives only at site hospital-a" in message
        else:
            assert backend.reference(site_row) == backend.reference(path_row) == "train"
    finally:
        backend.close()


def test_coordinator_context_needs_open_and_close_ends_every_worker_the_backend_started(case, computation, expected,
                                                                                       tmp_path):
    """Case 3: ``coordinator_context()`` raises before ``open`` (and again after ``close``); after
    ``open`` it merges the sites' parts and finishes the computation (``merge``, ``after_merge``, as
    the round router does). ``close()`` ends every worker ``open`` started; the remote sites' own
    processes and workers stay up."""
    import tensorflow_federated as tff

    Struct = tff.structure.Struct
    _, form = computation
    before = {p.pid: p for p in worker_children()}
    backend = case.create(tmp_path / "logs")
    with pytest.raises(RuntimeError, match="backend is not open"):
        backend.coordinator_context()
    started: list[psutil.Process] = []
    try:
        backend.open(case.targets())
        started = [p for p in worker_children() if p.pid not in before]
        assert len(started) == case.workers_per_open, [p.pid for p in started]
        if case.name == "local":
            assert sorted(backend.worker_pids) == sorted(p.pid for p in started)
        parts = [site_part(backend, form.up_to_merge, site, rows) for site, rows in case.rows().items()]
        ctx = backend.coordinator_context()
        merged = parts[0]
        for part in parts[1:]:
            merged = ctx.invoke(form.merge, Struct.unnamed(merged, part))
        assert plain(merged) == _totals(expected)
        assert plain(ctx.invoke(form.after_merge, Struct.unnamed([], merged))) == _totals(expected)
    finally:
        backend.close()
    assert all(_ended(p) for p in started), [p.pid for p in started if not _ended(p)]
    with pytest.raises(RuntimeError, match="backend is not open"):
        backend.coordinator_context()
    assert all(not _ended(p) for p in before.values())  # e.g. the remote sites' workers
    assert all(psutil.pid_exists(pid) and not _ended(psutil.Process(pid)) for pid in case.site_pids)


def test_reconnect_leaves_the_backend_usable(case, computation, expected, tmp_path):
    """Case 4: after ``reconnect(site)`` (twice, and for every site) ``run_site`` gives the same parts."""
    _, form = computation
    with case.create(tmp_path / "logs") as backend:
        backend.open(case.targets())
        first = {site: plain(site_part(backend, form.up_to_merge, site, rows)) for site, rows in case.rows().items()}
        for site in SITES:
            backend.reconnect(site)
        backend.reconnect(SITES[0])
        again = {site: plain(site_part(backend, form.up_to_merge, site, rows)) for site, rows in case.rows().items()}
    assert first == again == expected


def test_under_an_approved_plan_the_sites_release_the_computed_result(case, computation, expected, digits_data,
                                                                       tmp_path):
    """Case 5: a plan of the computation (``make_computation_plan``), approved by the sites, run with
    ``run_federated(..., plan=...)``: the released total equals case 1's; then through the plug-point
    (``open(frozen=...)``): under a plan both backends name datasets by catalog name, each site
    releases case 1's part, and after ``reconnect`` again (a repeat, which costs the site nothing;
    the real sites' audit logs show one release and two repeats).

    Remote: a federation of sites that serve only approved plans (the module's sites serve any
    computation and so no releases), each approving with ``approve_at_site`` (``tffprod site
    approve``). Local: its simulated sites approve the plan by themselves at ``open``.
    """
    from tffprod.executors.approvals import approve_at_site
    from tffprod.executors.config import load_site_config
    from tffprod.protocol.plan_document import load_plan
    from tffprod.sessions.analytics import make_computation_plan, run_federated
    from tffprod.sessions.approval import thaw, write_plan

    comp, _ = computation

    @contextlib.contextmanager
    def sites() -> Iterator[tuple[Any, Any]]:
        if case.name == "remote":
            with running_federation(tmp_path / "approving", _site_datasets(digits_data),
                                    computations="approved") as (fed, registry):
                yield fed, registry
        else:
            yield None, case.registry

    with sites() as (fed, registry):
        plan_path = write_plan(make_computation_plan(comp, REFS, registry=registry), tmp_path / "plan.json")
        if fed is not None:
            for site in SITES:
                approval = approve_at_site(plan_path, load_site_config(fed.site_config_path(site)))
                assert approval.plan_id == load_plan(plan_path).plan_id
        result = run_federated(comp, REFS, registry=registry, backend=case.create(tmp_path / "run", registry),
                               plan=plan_path, timeout_s=TIMEOUT_S)
        assert plain(result.value) == _totals(expected)
        assert [(s["site"], s["status"], s["examples"]) for s in result.sites] == [
            (site, "ok", expected[site][0]) for site in SITES]

        frozen = thaw(load_plan(plan_path))
        rows = case.rows(registry)
        with case.create(tmp_path / "plug-point", registry) as backend:
            backend.open(case.targets(registry), frozen=frozen)
            for site_rows in rows.values():
                assert [backend.reference(row) for row in site_rows] == list(SPLITS)
            released = {site: plain(site_part(backend, frozen.compute, site, site_rows))
                        for site, site_rows in rows.items()}
            for site in SITES:
                backend.reconnect(site)
            repeated = {site: plain(site_part(backend, frozen.compute, site, site_rows))
                        for site, site_rows in rows.items()}
        assert released == repeated == expected
        if fed is not None:  # the real sites released through their gateways, and audited each release
            from tffprod.executors.audit import read_audit_log

            for site in SITES:
                calls = read_audit_log(fed.workdir / "sites" / site / "state" / "audit.jsonl")
                releases = [c["release"] for c in calls if "release" in c]
                assert [(r["role"], sorted(r["datasets"]), r.get("repeat", False)) for r in releases] == [
                    ("compute", sorted(SPLITS), False), ("compute", sorted(SPLITS), True),
                    ("compute", sorted(SPLITS), True)], (site, releases)
    if case.name == "local":  # the simulated sites approved the plan and kept a ledger, as real ones do
        for run in ("run", "plug-point"):
            for site in SITES:
                state = tmp_path / run / f"site-{site}-state"
                assert (state / "privacy-ledger.sqlite").is_file() and list((state / "approvals").glob("*.json"))

