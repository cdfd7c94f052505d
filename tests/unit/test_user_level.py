"""User-level DP: client-id columns, per-client references, client sampling and its accounting.

Fast and TF-free: real files written with ``tffprod.data.files``, real registries, dp_accounting.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from tffprod.privacy.accounting import PrivacyLedger, epsilon_for
from tffprod.sessions.budgets import plan_budgets, rounds_that_fit
from tffprod.data.clients import client_ids, split_by_client
from tffprod.data.files import iter_examples, validate_file, write_csv, write_tfrecord
from tffprod.data.register import register_dataset
from tffprod.errors import DatasetError, SpecError
from tffprod.executors.config import load_site_config, write_site_config
from tffprod.executors.datarefs import CatalogEntry, DataRefs, RequestRefused
from tffprod.protocol.protos import array_pb2, computation_pb2, data_type_pb2, executor_pb2
from tffprod.registry import Registry
from tffprod.privacy.sampling import ClientSampler, Population, check_population
from tffprod.data.schema import Feature, Schema
from tffprod.sessions.spec import SamplingConfig, SessionSpec, dump_spec, load_spec

MODEL = Schema(features=(Feature("x", "float32"),), label=Feature("y", "int64"))
WITH_ID = Schema(features=(Feature("x", "float32"), Feature("cid", "int64")), label=Feature("y", "int64"))
WITH_NAME = Schema(features=(Feature("x", "float32"), Feature("who", "string")), label=Feature("y", "int64"))
OWNERS = [12, 3, 12, 7, 3, 12, 100]  # 4 clients; sorted numerically: 3, 7, 12, 100


def _rows():
    return [{"x": float(i), "cid": owner, "who": f"p{owner}", "y": i % 2} for i, owner in enumerate(OWNERS)]


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "rows.csv"
    write_csv(path, _rows(), WITH_ID)
    return path


@pytest.fixture
def tfrecord_file(tmp_path: Path) -> Path:
    path = tmp_path / "rows.tfrecord"
    write_tfrecord(path, _rows(), WITH_NAME)
    return path


# ---------------------------------------------------------------- data files


def test_client_ids_sort_numerically_and_shards_hold_each_clients_rows(csv_file: Path, tmp_path: Path) -> None:
    assert client_ids(csv_file, "csv", "cid") == ["3", "7", "12", "100"]
    shards = split_by_client(csv_file, "csv", "cid", tmp_path / "shards")
    assert [s.name for s in shards] == ["00000.csv", "00001.csv", "00002.csv", "00003.csv"]
    xs = [[row["x"] for row in iter_examples(s, "csv", MODEL)]
          for s in shards]
    assert xs == [[1.0, 4.0], [3.0], [0.0, 2.0, 5.0], [6.0]]
    assert split_by_client(csv_file, "csv", "cid", tmp_path / "shards") == shards  # written once


def test_tfrecord_shards_copy_records_and_string_ids_sort_as_text(tfrecord_file: Path, tmp_path: Path) -> None:
    assert client_ids(tfrecord_file, "tfrecord", "who") == ["p100", "p12", "p3", "p7"]
    shards = split_by_client(tfrecord_file, "tfrecord", "who", tmp_path / "shards")
    assert [validate_file(s, "tfrecord", MODEL) for s in shards] == [1, 3, 2, 1]


@pytest.mark.parametrize("fmt, column, message", [
    ("csv", "nope", "missing client-id column 'nope'"),
    ("tfrecord", "nope", "client-id column 'nope': missing"),
    ("tfrecord", "x", "holds a float_list; a client id is an int64 or a string"),
])
def test_a_bad_client_id_column_is_one_line(csv_file, tfrecord_file, fmt, column, message) -> None:
    with pytest.raises(DatasetError) as info:
        client_ids(csv_file if fmt == "csv" else tfrecord_file, fmt, column)
    assert message in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- registry and CLI


def test_register_with_a_client_id_counts_clients_and_a_new_column_is_a_new_version(tmp_path, csv_file) -> None:
    with Registry.open(tmp_path / "r.db") as registry:
        plain = register_dataset(registry, "bank-a/train", csv_file, schema=MODEL)
        assert plain["client_id"] is None and plain["num_clients"] == 1
        row = register_dataset(registry, "bank-a/train", csv_file, schema=MODEL, client_id="cid")
        assert (row["version"], row["client_id"], row["num_clients"]) == (2, "cid", 4)
        assert register_dataset(registry, "bank-a/train", csv_file, schema=MODEL, client_id="cid")["version"] == 2
        with pytest.raises(DatasetError, match="missing client-id column 'nope'"):
            register_dataset(registry, "bank-a/train", csv_file, schema=MODEL, client_id="nope")
        with pytest.raises(SpecError, match="--client-id must be a column name"):
            register_dataset(registry, "bank-a/train", csv_file, schema=MODEL, client_id="a#b")


def test_cli_register_with_client_id(tmp_path, csv_file) -> None:
    from tffprod.cli.main import cli

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(MODEL.to_dict()))
    db = str(tmp_path / "r.db")
    result = CliRunner().invoke(cli, ["dataset", "register", "bank-a/train", str(csv_file), "--schema", str(schema),
                                      "--client-id", "cid", "--registry", db])
    assert result.exit_code == 0, result.output
    assert "4 clients by cid" in result.output
    shown = CliRunner().invoke(cli, ["dataset", "show", "bank-a/train", "--registry", db])
    assert "client (column cid), 4 clients" in shown.output
    header, row = CliRunner().invoke(cli, ["dataset", "list", "--registry", db]).output.splitlines()
    assert header.split() == ["REF", "FORMAT", "NUM_EXAMPLES", "CLIENT_ID", "NUM_CLIENTS", "REGISTERED_AT"]
    assert row.split()[3:5] == ["cid", "4"]


# ---------------------------------------------------------------- the site: config, catalog, references


def _site_config(tmp_path: Path, csv_file: Path, **dataset) -> Path:
    (tmp_path / "schema.json").write_text(json.dumps(MODEL.to_dict()))
    return write_site_config(tmp_path / "site.toml", {
        "name": "bank-a", "listen": "127.0.0.1:0", "insecure_dev": True, "state_dir": "state",
        "coordinators": [{"identity": "coordinator", "token_sha256": "0" * 64}],
        "datasets": {"train": {"path": str(csv_file), "schema_file": "schema.json", **dataset},
                     "eval": {"path": str(csv_file), "schema_file": "schema.json"}},
    })


def test_site_config_client_id_reaches_the_public_catalog_without_ids_or_paths(tmp_path, csv_file) -> None:
    config = load_site_config(_site_config(tmp_path, csv_file, client_id="cid"))
    assert config.datasets["train"].client_id == "cid" and config.datasets["eval"].client_id is None
    catalog = config.build_catalog()
    public = catalog["train"].public()
    assert (public["client_id"], public["num_clients"]) == ("cid", 4)
    assert catalog["eval"].public()["num_clients"] == 1
    text = json.dumps(public)
    assert str(tmp_path) not in text and "p12" not in text
    assert all(Path(p).is_file() and Path(p).is_relative_to(tmp_path / "state") for p in catalog["train"].client_paths)


@pytest.mark.parametrize("value, message", [
    (5, "'datasets.train.client_id' must be a column name"),
    ("a b", "'datasets.train.client_id' must be a column name"),
])
def test_a_bad_site_client_id_is_refused(tmp_path, csv_file, value, message) -> None:
    with pytest.raises(SpecError, match=message):
        load_site_config(_site_config(tmp_path, csv_file, client_id=value))


def test_a_missing_site_client_id_column_fails_the_catalog(tmp_path, csv_file) -> None:
    config = load_site_config(_site_config(tmp_path, csv_file, client_id="nope"))
    with pytest.raises(DatasetError, match="dataset 'train': .*missing client-id column 'nope'"):
        config.build_catalog()


def _clients_request(*names: bytes) -> bytes:
    federated_type = computation_pb2.FederatedType(
        placement=computation_pb2.PlacementSpec(value=computation_pb2.Placement(uri="clients")), all_equal=False,
        member=computation_pb2.Type(tensor=computation_pb2.TensorType(dtype=data_type_pb2.DT_STRING)))
    values = [executor_pb2.Value(array=array_pb2.Array(
        dtype=data_type_pb2.DT_STRING, shape=array_pb2.ArrayShape(),
        string_list=array_pb2.Array.BytesList(value=[n]))) for n in names]
    return executor_pb2.CreateValueRequest(value=executor_pb2.Value(federated=executor_pb2.Value.Federated(
        type=federated_type, value=values))).SerializeToString()


def _rewritten(refs: DataRefs, *names: bytes, **kwargs) -> list[bytes]:
    message = executor_pb2.CreateValueRequest.FromString(refs.names_to_paths(_clients_request(*names), **kwargs))
    return [v.array.string_list.value[0] for v in message.value.federated.value]


@pytest.fixture
def refs() -> DataRefs:
    return DataRefs("bank-a", {
        "train": CatalogEntry(name="train", path="/d/train.csv", format="csv", schema={}, num_examples=7,
                              content_hash="h", client_id="cid", num_clients=3,
                              client_paths=("/s/0.csv", "/s/1.csv", "/s/2.csv")),
        "eval": CatalogEntry(name="eval", path="/d/eval.csv", format="csv", schema={}, num_examples=3,
                             content_hash="h"),
    })


def test_client_references_become_shard_paths_and_come_back_as_names(refs: DataRefs) -> None:
    assert _rewritten(refs, b"train#0", b"train#2", b"eval", b"train") == [
        b"/s/0.csv", b"/s/2.csv", b"/d/eval.csv", b"/d/train.csv"]
    assert refs.redact("/s/2.csv: bad row") == "dataset 'train#2': bad row"


@pytest.mark.parametrize("name, code, detail", [
    (b"train#3", grpc.StatusCode.NOT_FOUND, "dataset 'train' at site bank-a has no client 3 (clients 0..2)"),
    (b"train#-1", grpc.StatusCode.INVALID_ARGUMENT, "'train#-1': a client index is a whole number 0..2"),
    (b"train#01", grpc.StatusCode.INVALID_ARGUMENT, "'train#01': a client index is a whole number 0..2"),
    (b"train#", grpc.StatusCode.INVALID_ARGUMENT, "'train#': a client index is a whole number 0..2"),
    (b"eval#0", grpc.StatusCode.INVALID_ARGUMENT,
     "dataset 'eval' at site bank-a has no client-id column: refer to it without '#'"),
    (b"other#0", grpc.StatusCode.NOT_FOUND, "dataset 'other' is not in site bank-a's catalog (known: eval, train)"),
])
def test_bad_client_references_are_refused_in_one_line(refs: DataRefs, name, code, detail) -> None:
    with pytest.raises(RequestRefused) as info:
        refs.names_to_paths(_clients_request(name))
    assert info.value.code is code and info.value.detail == detail


def test_datasets_outside_the_approved_plan_are_permission_denied(refs: DataRefs) -> None:
    assert _rewritten(refs, b"train#1", allowed=["train"]) == [b"/s/1.csv"]
    for name in (b"eval", b"eval#0"):
        with pytest.raises(RequestRefused) as info:
            refs.names_to_paths(_clients_request(name), allowed={"train"})
        assert info.value.code is grpc.StatusCode.PERMISSION_DENIED
        assert info.value.detail == "dataset 'eval' is not in the approved plan"


def test_sync_site_mirrors_client_id_and_count(tmp_path, monkeypatch) -> None:
    from tffprod.sites import admin as sites
    entry = {"name": "train", "format": "csv", "schema": MODEL.to_dict(), "num_examples": 7,
             "content_hash": "sha256:" + "1" * 64, "budget": None, "client_id": "cid", "num_clients": 4}
    monkeypatch.setattr(sites, "fetch_info", lambda registry, name: {"site": name, "catalog": [entry]})
    with Registry.open(tmp_path / "r.db") as registry:
        registry.add_site("bank-a", address="x:1", info={})
        (row,) = sites.sync_site(registry, "bank-a")
        assert (row["path"], row["client_id"], row["num_clients"]) == ("site://bank-a/train", "cid", 4)
        assert sites.sync_site(registry, "bank-a")[0]["version"] == 1
        entry["num_clients"] = 5
        assert sites.sync_site(registry, "bank-a")[0]["version"] == 2


# ---------------------------------------------------------------- spec


def _spec(**extra) -> SessionSpec:
    return SessionSpec.from_dict({"name": "m", "task": "tffprod.examples.fraud:task", "rounds": 5,
                                  "datasets": ["bank-a/train", "bank-b/train"], **extra})


def test_sampling_table_parses_and_round_trips(tmp_path) -> None:
    spec = _spec(sampling={"client_rate": 0.05})
    assert spec.sampling == SamplingConfig(client_rate=0.05) and spec.sampling.mode == "poisson"
    assert _spec(sampling={"clients_per_round": 20}).sampling.mode == "fixed"
    dump_spec(spec, tmp_path / "s.toml")
    assert "[sampling]\nclient_rate = 0.05" in (tmp_path / "s.toml").read_text()
    assert load_spec(tmp_path / "s.toml") == spec
    assert "sampling" not in _spec().to_dict()


@pytest.mark.parametrize("sampling, message", [
    ({}, "'[sampling]' needs exactly one of 'sampling.client_rate' (Poisson) or 'sampling.clients_per_round'"),
    ({"client_rate": 0.1, "clients_per_round": 3}, "needs exactly one of"),
    ({"client_rate": 0}, "'sampling.client_rate' must be a number with 0 < q <= 1, got 0"),
    ({"client_rate": 1.5}, "'sampling.client_rate' must be a number with 0 < q <= 1"),
    ({"clients_per_round": 0}, "'sampling.clients_per_round' must be an integer >= 1, got 0"),
    ({"clients_per_round": 2.5}, "'sampling.clients_per_round' must be an integer, got float 2.5"),
    ({"rate": 0.1}, "unknown key 'sampling.rate'"),
    (0.1, "'sampling' must be a table, got float 0.1"),
])
def test_bad_sampling_is_one_line(sampling, message) -> None:
    with pytest.raises(SpecError) as info:
        _spec(sampling=sampling)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_one_step_user_updates_round_trip_and_need_a_fixed_clip(tmp_path) -> None:
    dp = {"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 0.5, "delta": 1e-5}
    spec = _spec(sampling={"client_rate": 0.05, "user_update": "one_step"}, dp=dp)
    assert spec.sampling.user_update == "one_step" and _spec(sampling={"client_rate": 0.05}).sampling.user_update \
        == "local_epochs"
    dump_spec(spec, tmp_path / "s.toml")
    assert load_spec(tmp_path / "s.toml") == spec and 'user_update = "one_step"' in (tmp_path / "s.toml").read_text()
    with pytest.raises(SpecError, match="needs \\[dp\\] mechanism = \"gaussian_fixed\""):
        _spec(sampling={"client_rate": 0.05, "user_update": "one_step"})
    with pytest.raises(SpecError, match="'sampling.user_update'"):
        _spec(sampling={"client_rate": 0.05, "user_update": "vectorised"}, dp=dp)


def test_a_sampling_key_at_the_top_level_suggests_the_table() -> None:
    with pytest.raises(SpecError, match=r"unknown key 'client_rate' \(did you mean '\[sampling\] client_rate'\?\)"):
        _spec(client_rate=0.1)


# ---------------------------------------------------------------- sampling


def _datasets(*clients: int | None) -> tuple[dict, ...]:
    return tuple({"ref": f"site-{i}/train:1", "site": f"site-{i}", "name": "train", "client_id": None if n is None
                  else "customer_id", "num_clients": n or 1} for i, n in enumerate(clients))


def test_population_describes_its_unit_and_sampling() -> None:
    site_level = Population(_datasets(None, None))
    assert (site_level.unit, site_level.size, site_level.accounting()) == ("site dataset (site-level)", 2,
                                                                          {"sampling_rate": 1.0})
    poisson = Population(_datasets(100, 300), SamplingConfig(client_rate=0.05))
    assert poisson.unit == "client (column customer_id)" and poisson.size == 400
    assert poisson.expected_clients_per_round == pytest.approx(20.0)
    assert poisson.accounting() == {"sampling_rate": 0.05}
    assert poisson.describe()["accountants"] == ["rdp", "pld"]
    fixed = Population(_datasets(100, 300), SamplingConfig(clients_per_round=20))
    assert fixed.accounting() == {"fixed_sample": (400, 20)} and fixed.sampling_rate == 0.05
    assert fixed.describe()["neighbouring"] == "replace one client"
    assert Population(_datasets(3, 2), SamplingConfig(clients_per_round=5)).accounting() == {"sampling_rate": 1.0}


@pytest.mark.parametrize("clients, sampling, message", [
    ((100, None), None, "datasets must all have a client-id column or none: site-0/train:1 have one, "
                        "site-1/train:1 do not"),
    ((None, None), SamplingConfig(client_rate=0.1), "'[sampling]' needs datasets with a client-id column"),
    ((3, 2), SamplingConfig(clients_per_round=6), "'sampling.clients_per_round' = 6 exceeds the 5 clients"),
])
def test_populations_that_do_not_fit_are_refused(clients, sampling, message) -> None:
    with pytest.raises(SpecError) as info:
        check_population(Population(_datasets(*clients), sampling))
    assert message in str(info.value)


def test_sampling_is_reproducible_and_spans_every_dataset() -> None:
    population = Population(_datasets(100, 300), SamplingConfig(client_rate=0.05))
    draws = [[(c.dataset["site"], c.index) for c in ClientSampler(population, seed=7).draw()] for _ in range(2)]
    assert draws[0] == draws[1] and 5 < len(draws[0]) < 45
    sampler = ClientSampler(population, seed=7)
    rounds = [sampler.draw() for _ in range(50)]
    assert {c.dataset["site"] for r in rounds for c in r} == {"site-0", "site-1"}
    assert 0.04 < sum(len(r) for r in rounds) / (50 * 400) < 0.06
    assert all(0 <= c.index < c.dataset["num_clients"] for r in rounds for c in r)
    assert rounds[0][0].reference_row()["client_index"] == rounds[0][0].index

    fixed = ClientSampler(Population(_datasets(100, 300), SamplingConfig(clients_per_round=20)), seed=1)
    for _ in range(5):
        drawn = [(c.dataset["site"], c.index) for c in fixed.draw()]
        assert len(drawn) == len(set(drawn)) == 20
    everyone = ClientSampler(Population(_datasets(None, None)), seed=0).draw()
    assert [(c.dataset["site"], c.index) for c in everyone] == [("site-0", None), ("site-1", None)]
    assert everyone[0].reference_row() is everyone[0].dataset


def test_a_poisson_round_can_sample_nobody() -> None:
    sampler = ClientSampler(Population(_datasets(2), SamplingConfig(client_rate=0.01)), seed=0)
    assert any(not sampler.draw() for _ in range(20))


# ---------------------------------------------------------------- accounting and budgets


def test_fixed_samples_are_accounted_without_replacement_with_rdp_only() -> None:
    import dp_accounting
    from dp_accounting import rdp

    ledger = PrivacyLedger(noise_multiplier=1.0, delta=1e-5)
    ledger.record_round(fixed_sample=(400, 20))
    epsilon = ledger.record_round(fixed_sample=(400, 20))
    event = dp_accounting.SampledWithoutReplacementDpEvent(400, 20, dp_accounting.GaussianDpEvent(1.0))
    acct = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    expected = acct.compose(event, 2).get_epsilon(1e-5)
    assert epsilon == pytest.approx(expected, rel=1e-12)
    assert epsilon_for(noise_multiplier=1.0, rounds=2, delta=1e-5, fixed_sample=(400, 20)) == pytest.approx(expected)
    assert ledger.sampling_rates == (0.05,) * 2 and not ledger.supports("pld")
    assert PrivacyLedger.from_dict(ledger.to_dict()).epsilon() == pytest.approx(expected)
    with pytest.raises(ValueError, match="cannot mix"):
        ledger.record_round(sampling_rate=0.05)
    with pytest.raises(ValueError, match="PLD accountant does not support fixed-size"):
        ledger.epsilon("pld")
    with pytest.raises(ValueError, match="fixed_sample must be"):
        ledger.record_round(fixed_sample=(10, 20))


def test_poisson_rounds_report_rdp_and_pld_as_dp_accounting_does() -> None:
    import dp_accounting
    from dp_accounting import pld, rdp

    ledger = PrivacyLedger(noise_multiplier=1.1, delta=1e-5)
    for _ in range(3):
        ledger.record_round(sampling_rate=0.05)
    event = dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.1))
    assert ledger.epsilon() == pytest.approx(rdp.RdpAccountant().compose(event, 3).get_epsilon(1e-5), rel=1e-12)
    assert ledger.epsilon("pld") == pytest.approx(pld.PLDAccountant().compose(event, 3).get_epsilon(1e-5), rel=1e-9)


def test_budgets_plan_with_the_sessions_sampling(tmp_path) -> None:
    spec = _spec(dp={"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5,
                     "on_budget": "stop"}, sampling={"client_rate": 0.05}, rounds=200)
    with Registry.open(tmp_path / "r.db") as registry:
        for site in ("bank-a", "bank-b"):
            registry.add_dataset(site=site, name="train", path=f"/d/{site}.csv", format="csv",
                                 schema=MODEL.to_dict(), num_examples=900, content_hash="sha256:1",
                                 client_id="cid", num_clients=150)
        registry.set_budget("bank-a", "train", epsilon=2.0, delta=1e-4, source="coordinator")
        datasets = [registry.get_dataset(ref) for ref in spec.datasets]
        plan = plan_budgets(spec, datasets, registry=registry)
        assert plan.planned_epsilon == pytest.approx(
            epsilon_for(noise_multiplier=1.0, rounds=200, delta=1e-5, sampling_rate=0.05))
        fits = rounds_that_fit(noise_multiplier=1.0, delta=1e-5, epsilon=2.0, rounds=200, sampling_rate=0.05)
        assert plan.max_rounds == fits and 3 < fits < 200  # q=1 would fit far fewer
        assert fits > rounds_that_fit(noise_multiplier=1.0, delta=1e-5, epsilon=2.0, rounds=200)
        (report,) = registry.privacy_report(site="bank-a", name="train")
        assert report["unit"] == "client (column cid)"
    from tffprod.cli.main import cli

    shown = CliRunner().invoke(cli, ["privacy", "report", "--registry", str(tmp_path / "r.db")])
    assert shown.exit_code == 0 and "unit: client (column cid)" in shown.output


# ---------------------------------------------------------------- the round loop (TF-free, with a fake trainer)


class _FakeBackend:
    """References like the remote backend's; nothing to open."""

    name = "fake"
    frozen = False

    def open(self, sites, *, frozen=None, federation=None) -> None:
        self.sites = [s.name for s in sites]

    def close(self) -> None:
        pass

    def reference(self, dataset) -> str:
        index = dataset.get("client_index")
        return dataset["name"] if index is None else f"{dataset['name']}#{index}"


def test_only_sampled_clients_reach_their_sites_and_empty_rounds_still_count(tmp_path, monkeypatch) -> None:
    from types import SimpleNamespace

    from tffprod.sessions import runner as session_module
    from tffprod.task import load_task

    def site_outcome(site: str, clients: int):
        record = {"site": site, "status": "ok", "duration_s": 0.1, "clients": clients, "examples": 0,
                  "error": None, "attempts": 1}
        return SimpleNamespace(site=site, status="ok", to_dict=lambda: dict(record))

    calls: list[dict] = []

    class FakeTrainer:
        def __init__(self, plan, backend, frozen=None) -> None:
            self.state = 0

        def run_round(self, refs_by_site=None, timeout_s=None, round_num=0):
            calls.append({site: list(refs) for site, refs in refs_by_site.items()})
            self.state += 1
            sites = [site_outcome(site, len(refs)) for site, refs in refs_by_site.items()]
            return SimpleNamespace(output=SimpleNamespace(state=self.state, metrics={"loss": 1.0}), sites=sites,
                                   duration_s=0.1)

        def dp_event(self):
            return None

        def save(self, directory, round_num):
            return directory / f"round-{round_num}", "0" * 64

        def weights(self):
            return self.state

        def close(self) -> None:
            pass

    monkeypatch.setattr(session_module, "_Trainer", FakeTrainer)
    monkeypatch.setattr(PrivacyLedger, "supports", lambda self, accountant: accountant == "rdp")
    monkeypatch.setattr(session_module, "_register_model", lambda plan, *args, **kwargs: {"version": 1})
    spec = _spec(rounds=20, dp={"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5},
                 sampling={"client_rate": 0.1})
    datasets = tuple({"ref": f"{site}/train:1", "site": site, "name": "train", "num_examples": 30,
                      "client_id": "cid", "num_clients": 3} for site in ("bank-a", "bank-b"))
    plan = session_module.SessionPlan(spec, load_task(spec.task), datasets, (), "csv")
    with Registry.open(tmp_path / "r.db") as registry:
        result = session_module.run_session(plan, registry=registry, backend=_FakeBackend(), artifacts_dir=tmp_path)
        rounds = registry.list_rounds(result["id"])
    assert result["privacy"]["unit"] == "client (column cid)" and result["privacy"]["clients"] == 6
    assert len(rounds) == 20 and 0 < len(calls) < 20  # some rounds sampled nobody and called no site
    assert all(refs for call in calls for refs in call.values())  # a site with no sampled client is not called
    assert {ref for call in calls for refs in call.values() for ref in refs} <= {f"train#{i}" for i in range(3)}
    assert sum(r["clients"] for r in rounds) == sum(len(refs) for call in calls for refs in call.values())
    empty = [r for r in rounds if r["clients"] == 0]
    assert empty and all(r["participants"] == [] and r["metrics"] == {} for r in empty)
    assert all(r["sampling_rate"] == 0.1 for r in rounds)
    expected = epsilon_for(noise_multiplier=1.0, rounds=20, delta=1e-5, sampling_rate=0.1)
    assert rounds[-1]["epsilon"] == pytest.approx(expected, rel=1e-9)  # every round counts, empty or not
    assert [r["epsilon"] for r in rounds] == sorted(r["epsilon"] for r in rounds)
    assert all(r["epsilon_pld"] is None for r in rounds)  # PLD is skipped here for speed (see the e2e test)


def test_an_approved_plan_that_samples_must_fit_its_budgets_whole() -> None:
    from tffprod.sessions.budgets import BudgetPlan
    from tffprod.errors import PrivacyBudgetError
    from tffprod.sessions.approval import check_whole_plan_fits
    from tffprod.sessions.planning import SessionPlan
    from tffprod.task import load_task

    datasets = tuple({"ref": f"{bank}/train:1", "site": bank, "name": "train", "num_examples": 30,
                      "client_id": "cid", "num_clients": 10} for bank in ("bank-a", "bank-b"))
    dp = {"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5, "on_budget": "stop"}

    def plan(sampling, max_rounds):
        spec = _spec(rounds=10, dp=dp, **({"sampling": sampling} if sampling else {}))
        return SessionPlan(spec, load_task(spec.task), datasets, (), "csv",
                           BudgetPlan({"bank-b/train": 1.5}, max_rounds, 3.0))

    with pytest.raises(PrivacyBudgetError, match=r"^the plan samples clients or sites, so each site charges all 10 "
                                                 r"rounds at its first release, and dataset bank-b/train's remaining "
                                                 r"budget holds 4; plan 4 round\(s\) or raise the budget$"):
        check_whole_plan_fits(plan({"client_rate": 0.2}, 4))
    with pytest.raises(PrivacyBudgetError):
        check_whole_plan_fits(plan({"clients_per_round": 5}, 9))
    check_whole_plan_fits(plan({"client_rate": 0.2}, 10))  # the whole plan fits
    check_whole_plan_fits(plan(None, 4))  # every client each round: sites charge the rounds they serve
    check_whole_plan_fits(plan({"clients_per_round": 20}, 4))  # all 20 clients each round: no sample either
