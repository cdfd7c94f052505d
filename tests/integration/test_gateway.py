"""The site gateway: mTLS + token in front of a real ``worker_binary``, data by catalog name, audit.

Every test here talks to a real worker process through a real gateway on 127.0.0.1. None imports
TensorFlow: they speak the executor protocol with raw gRPC calls and protobuf messages loaded by
``tffprod.protocol.protos`` (the tests with TFF itself are in e2e/test_gateway_tff.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from tffprod.executors.audit import AuditLog
from tffprod.executors.datarefs import DataRefs, RequestRefused
from tffprod.executors.gateway import EXECUTOR_METHODS, EXECUTOR_SERVICE, Gateway
from tffprod.protocol.protos import array_pb2, computation_pb2, data_type_pb2, executor_pb2
from tffprod.protocol.siteinfo import fetch_site_info

from tests.helpers.executor_messages import clients_strings, string_array
from tests.helpers.gateway_site import (SITE, TOKEN, Site, dispose_executor, get_executor, make_pki, make_site_dir, rpc,
                                        site_catalog, status_of, tls_channel)

if TYPE_CHECKING:
    from tffprod.protocol import release_pb2

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- a site: worker + gateway (tests.helpers.gateway_site)


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    return make_pki()


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_site_dir(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def site(tmp_path_factory, site_dir, pki):
    s = Site(tmp_path_factory.mktemp("gw"), site_dir, pki)
    yield s
    s.close()


# ---------------------------------------------------------------- auth and audit


def test_a_good_call_is_forwarded_and_audited(site, pki):
    channel = tls_channel(site, pki)
    try:
        executor = get_executor(channel)
        assert executor.id
        dispose_executor(channel, executor)
    finally:
        channel.close()
    records = site.records()
    get, dispose = [r for r in records if r["identity"] == "coordinator"][-2:]
    assert get["method"] == f"/{EXECUTOR_SERVICE}/GetExecutor" and get["status"] == "OK"
    assert dispose["method"] == f"/{EXECUTOR_SERVICE}/DisposeExecutor" and dispose["status"] == "OK"
    assert get["bytes_in"] > 0 and get["bytes_out"] > 0 and get["detail"] is None
    assert get["duration_s"] >= 0 and get["time"].endswith("+00:00")
    assert TOKEN not in site.audit_path.read_text()


def test_a_wrong_token_is_unauthenticated_and_audited(site, pki):
    channel = tls_channel(site, pki, token="not-the-token")
    try:
        error = status_of(get_executor, channel)
    finally:
        channel.close()
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "bad token for 'coordinator'"
    last = site.records()[-1]
    assert (last["identity"], last["status"], last["detail"]) == (
        "coordinator", "UNAUTHENTICATED", "bad token for 'coordinator'")


def test_a_missing_token_is_unauthenticated(site, pki):
    channel = tls_channel(site, pki, token=None)
    try:
        assert status_of(get_executor, channel).code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()


def test_an_unknown_identity_is_unauthenticated(site, pki):
    channel = tls_channel(site, pki, "stranger")
    try:
        error = status_of(get_executor, channel)
    finally:
        channel.close()
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "unknown coordinator identity 'stranger'"
    assert site.records()[-1]["identity"] == "stranger"


def test_a_client_certificate_from_another_ca_is_refused(site, pki):
    channel = tls_channel(site, pki, "rogue")
    try:
        error = status_of(get_executor, channel)
    finally:
        channel.close()
    assert error.code() is grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails: no call reaches the gateway


def test_plaintext_against_the_tls_port_fails(site):
    channel = grpc.insecure_channel(site.address)
    try:
        error = status_of(get_executor, channel, metadata=[("authorization", f"Bearer {TOKEN}")])
    finally:
        channel.close()
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def test_plaintext_needs_insecure_dev_and_loopback(tmp_path, site_dir, pki):
    common = dict(site=SITE, worker_address="127.0.0.1:1", catalog=site_catalog(site_dir), tokens={})
    with AuditLog(tmp_path / "a.jsonl") as audit:
        with pytest.raises(ValueError, match="loopback"):
            Gateway(listen="0.0.0.0:0", tls=None, audit=audit, insecure_dev=True, **common)
        with pytest.raises(ValueError, match="loopback"):
            Gateway(listen="10.1.2.3:7001", tls=None, audit=audit, insecure_dev=True, **common)
        with pytest.raises(ValueError, match="TLS"):
            Gateway(listen="127.0.0.1:0", tls=None, audit=audit, **common)
        with pytest.raises(ValueError, match="SHA-256"):
            Gateway(listen="127.0.0.1:0", tls=None, audit=audit, insecure_dev=True,
                    **{**common, "tokens": {"coordinator": TOKEN}})
        for host in ("127.0.0.1", "127.8.9.10", "localhost", "[::1]"):
            Gateway(listen=f"{host}:0", tls=None, audit=audit, insecure_dev=True, **common)


def test_insecure_dev_takes_the_identity_from_metadata_and_still_checks_the_token(tmp_path, site_dir, pki):
    site = Site(tmp_path, site_dir, pki, insecure_dev=True)
    channel = grpc.insecure_channel(site.address)
    try:
        ok = [("authorization", f"Bearer {TOKEN}"), ("x-tffprod-identity", "coordinator")]
        dispose_executor(channel, get_executor(channel, metadata=ok), metadata=ok)
        bad = status_of(get_executor, channel, metadata=[("authorization", "Bearer nope"),
                                                          ("x-tffprod-identity", "coordinator")])
        assert (bad.code(), bad.details()) == (grpc.StatusCode.UNAUTHENTICATED, "bad token for 'coordinator'")
        anonymous = status_of(get_executor, channel, metadata=[("authorization", f"Bearer {TOKEN}")])
        assert anonymous.code() is grpc.StatusCode.UNAUTHENTICATED
        assert site.records()[-1]["identity"] == "?"
    finally:
        channel.close()
        site.close()


# ---------------------------------------------------------------- robustness


def test_garbage_is_invalid_argument_and_the_gateway_keeps_serving(site, pki):
    channel = tls_channel(site, pki)
    try:
        for method in ("CreateValue", "CreateCall", "Compute", "GetExecutor"):
            error = status_of(rpc, channel, method, b"\xff\xfe this is not a protobuf")
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, method
            assert "does not parse" in error.details()
        dispose_executor(channel, get_executor(channel))
    finally:
        channel.close()
    assert site.records()[-1]["status"] == "OK"


def test_worker_errors_pass_through_with_code_and_details(site, pki):
    channel = tls_channel(site, pki)
    try:
        request = executor_pb2.ComputeRequest(executor=executor_pb2.ExecutorId(id="no-such-executor"),
                                              value_ref=executor_pb2.ValueRef(id="0"))
        error = status_of(rpc, channel, "Compute", request)
    finally:
        channel.close()
    assert error.code() not in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    assert error.details()
    last = site.records()[-1]
    assert last["status"] == error.code().name and last["detail"] == error.details()


def test_a_dead_worker_gives_unavailable_with_a_clear_message(tmp_path, site_dir, pki):
    site = Site(tmp_path, site_dir, pki)
    channel = tls_channel(site, pki)
    try:
        dispose_executor(channel, get_executor(channel))
        site.worker.stop()
        error = status_of(get_executor, channel)
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert error.details() == f"site {SITE}: executor worker is not running"
        assert fetch_site_info(channel, TOKEN)["health"]["worker"] == "down"
    finally:
        channel.close()
        site.close()


# ---------------------------------------------------------------- data by catalog name


def test_catalog_names_become_paths_and_come_back_as_names(site, pki):
    channel = tls_channel(site, pki)
    direct = grpc.insecure_channel(site.worker.address)
    try:
        executor = get_executor(channel, clients=2)
        request = executor_pb2.CreateValueRequest(executor=executor, value=clients_strings(b"train", b"eval"))
        ref = executor_pb2.CreateValueResponse.FromString(rpc(channel, "CreateValue", request)).value_ref
        compute = executor_pb2.ComputeRequest(executor=executor, value_ref=ref)
        raw = rpc(channel, "Compute", compute)
        seen_by_worker = rpc(direct, "Compute", compute)  # the same executor, asked behind the gateway's back
        dispose_executor(channel, executor)
    finally:
        channel.close()
        direct.close()

    def strings(response: bytes) -> list[bytes]:
        members = executor_pb2.ComputeResponse.FromString(response).value.federated.value
        return [m.array.string_list.value[0] for m in members]

    assert strings(seen_by_worker) == [site.catalog[n].path.encode() for n in ("train", "eval")]
    assert strings(raw) == [b"train", b"eval"]
    assert site.catalog["train"].path.encode() not in raw


def _server_strings(*values: bytes) -> executor_pb2.Value:
    return executor_pb2.Value(federated=executor_pb2.Value.Federated(
        type=computation_pb2.FederatedType(placement=computation_pb2.PlacementSpec(
            value=computation_pb2.Placement(uri="server")), all_equal=True),
        value=[string_array(*values)]))


@pytest.mark.parametrize("placement", ["clients", "clients in a struct"])
def test_a_client_string_that_is_not_a_catalog_name_is_not_found(site, pki, placement):
    value = {
        "clients": clients_strings(b"train", b"/etc/passwd"),
        "clients in a struct": executor_pb2.Value(struct=executor_pb2.Value.Struct(element=[
            executor_pb2.Value.Struct.Element(name="state", value=_server_strings(b"GaussianDpEvent")),
            executor_pb2.Value.Struct.Element(name="data", value=clients_strings(b"eval", b"/etc/passwd"))])),
    }[placement]
    channel = tls_channel(site, pki)
    try:
        executor = get_executor(channel, clients=2)
        request = executor_pb2.CreateValueRequest(executor=executor, value=value)
        error = status_of(rpc, channel, "CreateValue", request)
        dispose_executor(channel, executor)
    finally:
        channel.close()
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == f"dataset '/etc/passwd' is not in site {SITE}'s catalog (known: eval, train)"


@pytest.mark.parametrize("value", [_server_strings(b"GaussianDpEvent"), string_array(b"dp_accounting")],
                         ids=["server", "unplaced"])
def test_strings_outside_clients_values_pass_unchanged(site_dir, value):
    refs = DataRefs(SITE, site_catalog(site_dir))
    request = executor_pb2.CreateValueRequest(value=value).SerializeToString()
    assert refs.names_to_paths(request) is request


def test_the_rewrite_rule_itself(site_dir):
    refs = DataRefs(SITE, site_catalog(site_dir))
    train_path = str(site_dir / "train-lines.txt").encode()
    request = executor_pb2.CreateValueRequest(value=clients_strings(b"train")).SerializeToString()
    rewritten = executor_pb2.CreateValueRequest.FromString(refs.names_to_paths(request))
    assert rewritten.value.federated.value[0].array.string_list.value == [train_path]
    # no strings: forwarded byte for byte
    floats = executor_pb2.CreateValueRequest(value=executor_pb2.Value(array=array_pb2.Array(
        dtype=data_type_pb2.DT_FLOAT, shape=array_pb2.ArrayShape(dim=[3]),
        float32_list=array_pb2.Array.FloatList(value=[1, 2, 3])))).SerializeToString()
    assert refs.names_to_paths(floats) is floats
    # client strings as raw content cannot be checked
    clients = clients_strings(b"train")
    clients.federated.value[0].array.CopyFrom(array_pb2.Array(
        dtype=data_type_pb2.DT_STRING, shape=array_pb2.ArrayShape(), content=b"/etc/passwd"))
    raw = executor_pb2.CreateValueRequest(value=clients).SerializeToString()
    with pytest.raises(RequestRefused) as info:
        refs.names_to_paths(raw)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert refs.redact(f"{train_path.decode()}: No such file") == "dataset 'train': No such file"


# ---------------------------------------------------------------- site info


def test_site_info_lists_the_catalog_without_paths(site, pki):
    channel = tls_channel(site, pki)
    try:
        raw = channel.unary_unary("/tffprod.v1.SiteInfo/Get")(b"ignored", timeout=10)
        info = fetch_site_info(channel, TOKEN)  # token in metadata as well as in the call credentials
    finally:
        channel.close()
    for entry in site.catalog.values():
        assert entry.path.encode() not in raw
        assert str(Path(entry.path).parent).encode() not in raw
    assert info == json.loads(raw) | {"health": info["health"]}
    assert info["site"] == SITE
    assert set(info["versions"]) == {"tffprod", "tensorflow_federated", "tensorflow"}
    assert info["versions"]["tensorflow_federated"] == "0.87.0"
    assert [e["name"] for e in info["catalog"]] == ["eval", "train"]
    assert set(info["catalog"][0]) == {"name", "format", "schema", "num_examples", "content_hash", "budget",
                                       "client_id", "num_clients"}
    assert info["catalog"][1]["num_examples"] == 3
    assert info["health"]["worker"] == "up" and info["health"]["uptime_s"] >= 0
    assert site.records()[-1]["method"] == "/tffprod.v1.SiteInfo/Get"


def test_site_info_needs_the_token(site, pki):
    channel = tls_channel(site, pki, token=None)
    try:
        error = status_of(fetch_site_info, channel, "wrong")
    finally:
        channel.close()
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------- no TensorFlow


def test_the_gateway_imports_without_tensorflow(report_line):
    code = textwrap.dedent("""
        import sys, time
        t = time.perf_counter()
        import tffprod.executors.gateway, tffprod.protocol.siteinfo
        from tffprod.protocol.protos import executor_pb2
        elapsed = time.perf_counter() - t
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_federated"))
        print(repr(loaded), elapsed)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    loaded, elapsed = out.stdout.strip().rsplit(" ", 1)
    assert loaded == "[]"
    report_line(f"importing the gateway and the protos (no TensorFlow): {float(elapsed):.3f} s")


# ---------------------------------------------------------------- under approval: releases only (TF-free refusals)


@pytest.fixture(scope="module")
def approved(tmp_path_factory, site_dir, pki):
    """A site under approval with one approved plan (hand-built computation, ``train`` and ``eval``)."""
    import json

    from tffprod.protocol.plan_document import PLAN_FORMAT, canonical_id, load_plan
    from tffprod.executors.approvals import ApprovalStore, approve
    from tffprod.executors.ledger import SiteLedger
    from tests.helpers.site_plans import computation_entry, site_computation

    tmp = tmp_path_factory.mktemp("approved")
    catalog = site_catalog(site_dir)
    body = {"format": PLAN_FORMAT, "created_at": "2026-11-30T00:00:00+00:00",
            "session": {"name": "lines", "rounds": 2, "seed": 0, "min_sites": 1}, "spec": {}, "task": {},
            "privacy": {"mechanism": "none"},
            "datasets": [{"role": "train", "ref": f"{SITE}/train:1", "site": SITE, "name": "train",
                          "content_hash": catalog["train"].content_hash, "num_examples": 3}],
            "coordinators": {}, "computations": [computation_entry(site_computation("lines"), bound=None)]}
    (tmp / "plan.json").write_text(json.dumps({**body, "plan_id": canonical_id(body)}))
    approval = approve(load_plan(tmp / "plan.json"), site=SITE, catalog=catalog, state_dir=tmp / "state")
    ledger = SiteLedger(tmp / "ledger.sqlite", site=SITE, budgets={})
    s = Site(tmp, site_dir, pki, approvals=ApprovalStore(tmp / "state"), ledger=ledger)
    s.plan_id = approval.plan_id
    yield s
    s.close()
    ledger.close()


def _release(channel, request: "release_pb2.ReleaseRequest", **kwargs) -> bytes:
    return channel.unary_unary("/tffprod.site.v1.Release/Release")(request.SerializeToString(), timeout=30, **kwargs)


def _request(approved_plan: str, **fields) -> "release_pb2.ReleaseRequest":
    import numpy as np

    from tffprod.protocol import release_pb2
    from tffprod.protocol.tensors import from_numpy

    request = dict(plan_id=approved_plan, role="train", round=1, datasets=[release_pb2.DatasetSelection(name="train")],
                   state=[from_numpy(np.zeros(2, np.float32))])
    request.update(fields)
    return release_pb2.ReleaseRequest(**request)


def test_under_approval_the_executor_protocol_is_not_served(approved, pki):
    channel = tls_channel(approved, pki)
    try:
        for method in EXECUTOR_METHODS:
            err = status_of(rpc, channel, method, b"")
            assert err.code() is grpc.StatusCode.UNIMPLEMENTED, method
        assert fetch_site_info(channel, TOKEN)["computations"] == "approved"
    finally:
        channel.close()


@pytest.mark.parametrize("fields, code, detail", [
    (dict(plan_id="f" * 64), "PERMISSION_DENIED", "is not approved here"),
    (dict(role="compute"), "INVALID_ARGUMENT", "has no 'compute' computation"),
    (dict(role="eval", round=0), "INVALID_ARGUMENT", "has no 'eval' computation"),
    (dict(round=3), "INVALID_ARGUMENT", "round 3 is not a round of plan"),
    (dict(round=0), "INVALID_ARGUMENT", "round 0 is not a round of plan"),
    (dict(datasets=[]), "INVALID_ARGUMENT", "reads at least one dataset"),
    (dict(datasets=[{"name": "eval"}]), "PERMISSION_DENIED", "dataset 'eval' is not a train dataset of plan"),
    (dict(datasets=[{"name": "/etc/passwd"}]), "PERMISSION_DENIED", "dataset '/etc/passwd' is not a train dataset"),
    (dict(datasets=[{"name": "train", "clients": [0]}]), "INVALID_ARGUMENT", "is read whole in this plan"),
    (dict(datasets=[{"name": "train"}, {"name": "train"}]), "INVALID_ARGUMENT", "is selected twice"),
    (dict(state=[]), "INVALID_ARGUMENT", "has 1 free tensors, got 0"),
    (dict(state=[{"dtype": "float32", "shape": [3], "content": bytes(12)}]), "INVALID_ARGUMENT",
     "state w: expected float32[2], got float32[3]"),
    (dict(state=[{"dtype": "float64", "shape": [2], "content": bytes(16)}]), "INVALID_ARGUMENT",
     "state w: expected float32[2], got float64[2]"),
    (dict(state=[{"dtype": "float32", "shape": [2], "content": bytes(7)}]), "INVALID_ARGUMENT",
     "expected 8 bytes of float32, got 7"),
    (dict(state=[{"dtype": "float32", "shape": [2], "content": b"\x00\x00\xc0\x7f" * 2}]), "INVALID_ARGUMENT",
     "holds a value that is not finite"),
])
def test_a_release_outside_the_plan_is_refused_in_one_line(approved, pki, fields, code, detail):
    channel = tls_channel(approved, pki)
    try:
        err = status_of(_release, channel, _request(approved.plan_id, **fields))
    finally:
        channel.close()
    assert err.code().name == code and detail in err.details() and "\n" not in err.details()
    record = approved.records()[-1]
    assert record["method"] == "/tffprod.site.v1.Release/Release" and record["status"] == code


def test_a_release_larger_than_any_approved_plan_allows_is_refused_before_it_is_parsed(approved, pki):
    from tffprod.protocol import release_pb2

    big = release_pb2.Tensor(dtype="float32", shape=[2**18], content=bytes(2**20))  # the plan's state: 8 bytes
    channel = tls_channel(approved, pki)
    try:
        err = status_of(_release, channel, _request(approved.plan_id, state=[big]))
    finally:
        channel.close()
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than any approved plan's" in err.details()


def _stream(channel, chunks, **kwargs) -> bytes:
    return channel.stream_unary("/tffprod.site.v1.Release/ReleaseStream")(
        iter([c.SerializeToString() for c in chunks]), timeout=30, **kwargs)


@pytest.mark.parametrize("data, code, detail", [
    ([bytes(8), bytes(8)], "RESOURCE_EXHAUSTED", "streams more than the plan's 8 bytes of state"),
    ([bytes(4)], "INVALID_ARGUMENT", "streamed 4 bytes of state, the plan's is 8"),
    ([], "INVALID_ARGUMENT", "streamed 0 bytes of state"),
])
def test_a_streamed_release_is_read_only_up_to_the_plans_state_size(approved, pki, data, code, detail):
    from tffprod.protocol import release_pb2

    header = _request(approved.plan_id, state=[release_pb2.Tensor(dtype="float32", shape=[2])])
    chunks = [release_pb2.ReleaseChunk(header=header)] + [release_pb2.ReleaseChunk(data=d) for d in data]
    channel = tls_channel(approved, pki)
    try:
        err = status_of(_stream, channel, chunks)
    finally:
        channel.close()
    assert err.code().name == code and detail in err.details()


@pytest.mark.parametrize("chunks, detail", [
    ("data first", "has no header where one belongs"),
    ("content in the header", "with its content streamed after the request"),
    ("nothing", "has no header where one belongs"),
])
def test_a_malformed_release_stream_is_invalid_argument(approved, pki, chunks, detail):
    import numpy as np

    from tffprod.protocol import release_pb2
    from tffprod.protocol.tensors import from_numpy

    pieces = {"data first": [release_pb2.ReleaseChunk(data=bytes(8))],
              "content in the header": [release_pb2.ReleaseChunk(header=_request(
                  approved.plan_id, state=[from_numpy(np.zeros(2, np.float32))]))],
              "nothing": []}[chunks]
    channel = tls_channel(approved, pki)
    try:
        err = status_of(_stream, channel, pieces)
    finally:
        channel.close()
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and detail in err.details()


def test_a_streamed_release_passes_the_same_checks_as_a_whole_one(approved, pki):
    from tffprod.backends.release import pieces

    channel = tls_channel(approved, pki)
    try:  # pieces() splits a request as a coordinator does; this one names data outside the plan
        err = status_of(_stream, channel, list(pieces(_request(approved.plan_id, datasets=[{"name": "eval"}]))))
    finally:
        channel.close()
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED and "is not a train dataset" in err.details()
    assert approved.records()[-1]["method"] == "/tffprod.site.v1.Release/ReleaseStream"


def test_under_approval_no_message_above_a_streamed_piece_is_read(approved, pki):
    from tffprod.executors.release import MAX_PIECE_BYTES

    channel = tls_channel(approved, pki)
    try:
        err = status_of(channel.unary_unary("/tffprod.site.v1.Release/Release"), bytes(MAX_PIECE_BYTES + 1),
                        timeout=30)
    finally:
        channel.close()
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own limit: refused before it is read


def test_garbage_to_the_release_service_is_invalid_argument(approved, pki):
    channel = tls_channel(approved, pki)
    try:
        err = status_of(channel.unary_unary("/tffprod.site.v1.Release/Release"), b"\xff\x00garbage", timeout=30)
    finally:
        channel.close()
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "does not parse" in err.details()


def test_a_site_of_some_federations_refuses_calls_for_others(tmp_path, site_dir, pki):
    site = Site(tmp_path, site_dir, pki, federations=["hospitals"])
    channel = tls_channel(site, pki)
    try:
        none = status_of(get_executor, channel)
        assert (none.code(), none.details()) == (
            grpc.StatusCode.PERMISSION_DENIED, f"site {SITE} serves only federation(s) hospitals; the call names none")
        rivals = status_of(get_executor, channel, metadata=[("x-tffprod-federation", "rivals")])
        assert rivals.details() == f"site {SITE} does not serve federation 'rivals' (it serves: hospitals)"
        ours = [("x-tffprod-federation", "hospitals")]
        dispose_executor(channel, get_executor(channel, metadata=ours), metadata=ours)
        assert fetch_site_info(channel, TOKEN)["federations"] == ["hospitals"]  # site info needs no federation
    finally:
        channel.close()
        site.close()
    assert [r["status"] for r in site.records()][:2] == ["PERMISSION_DENIED", "PERMISSION_DENIED"]
