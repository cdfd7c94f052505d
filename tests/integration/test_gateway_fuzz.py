"""Fuzzing a real site gateway: thousands of hostile calls, and it keeps serving its other callers.

One ``tffprod site serve`` process (mTLS with certificates from ``tffprod.security.certs``, a bearer token,
computations under approval, a supervised ``worker_binary``) is started for the module. Each test
below throws one kind of hostile input at it, generated with hypothesis (derandomized: CI
reruns the same inputs):

* garbage bytes to every RPC method: empty, random, truncated and bit-flipped valid messages;
* well-formed but hostile protos: release requests for plans that are not approved, with
  random roles, rounds, dataset selections and tensors; and TFF executor-protocol messages
  (random ``Value`` trees, nesting past the parser's limit, unknown ids), which a site under
  approval does not serve at all (``UNIMPLEMENTED``);
* messages above the gateway's receive limit (the site's ``worker.max_message_mb``, 1 MB here);
* malformed metadata: missing, garbage, long, repeated or mis-schemed bearer tokens, unknown
  and repeated federation headers, huge header values;
* connections without a client certificate or with one from another CA.

Every hostile call must end in a gRPC error status within a few seconds: never OK, never a
hang, never ``UNKNOWN``, never a Python traceback in the details. After every batch the site
process must still be running, with the same worker, and must still answer a well-behaved
caller correctly (site info, and a well-formed release of an unknown plan refused for that reason). The last
test prints one summary line to the terminal. No TensorFlow is imported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import grpc
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tffprod.security.certs import init_ca, issue
from tffprod.data.files import write_tfrecord
from tffprod.executors.config import hash_token, write_site_config
from tffprod.executors.gateway import EXECUTOR_METHODS, EXECUTOR_SERVICE, MESSAGE_LIMITS
from tffprod.protocol.protos import array_pb2, computation_pb2, data_type_pb2, executor_pb2
from tffprod.executors.release import RELEASE_METHOD
from tffprod.protocol.siteinfo import FEDERATION_HEADER, IDENTITY_HEADER, SITE_INFO_METHOD
from tffprod.protocol import release_pb2
from tffprod.data.schema import Feature, Schema

from tests.helpers.executor_messages import clients_strings, string_array

pytestmark = pytest.mark.integration

SITE = "fuzz-site"
TOKEN = "fuzz-token-0123456789"
SCHEMA = Schema(features=(Feature("x", "float32", (3,)),), label=Feature("y", "int64"))
TFFPROD = Path(sys.executable).parent / "tffprod"
CALL_TIMEOUT_S = 5.0
LIMIT_BYTES = 2**20  # worker.max_message_mb = 1 below
METHODS = (RELEASE_METHOD,) + tuple(f"/{EXECUTOR_SERVICE}/{m}" for m in EXECUTOR_METHODS) + (SITE_INFO_METHOD,)
# Statuses a refused call may end with. UNKNOWN means a handler raised past the gateway's own error
# handling; DEADLINE_EXCEEDED means it hung; OK means garbage was accepted.
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.CANCELLED}
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

COUNTS: dict[str, int] = {}  # batch -> hostile calls sent
STATUSES: dict[str, int] = {}  # status name -> how many hostile calls ended with it
PROBLEMS: list[str] = []  # hostile calls served, hung, or answered with UNKNOWN or a traceback


# ---------------------------------------------------------------- the site under fuzz


class FuzzedSite:
    """``tffprod site serve`` over mTLS as a child process, and channels to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.certs = root / "certs"
        init_ca(root / "ca")
        issue(SITE, ca_dir=root / "ca", out_dir=self.certs, hosts=("127.0.0.1", "localhost"))
        issue("coordinator", ca_dir=root / "ca", out_dir=self.certs)
        issue("stranger", ca_dir=root / "ca", out_dir=root / "stranger")
        init_ca(root / "rogue-ca", name="someone-else")
        issue("coordinator", ca_dir=root / "rogue-ca", out_dir=root / "rogue")
        write_tfrecord(root / "data" / "train.tfrecord",
                       [{"x": [float(i), 0.0, 1.0], "y": i % 2} for i in range(8)], SCHEMA)
        (root / "schema.json").write_text(json.dumps(SCHEMA.to_dict()))
        self.config = write_site_config(root / "site.toml", {
            "name": SITE,
            "listen": "127.0.0.1:0",
            "state_dir": "state",
            "tls": {"cert": f"certs/{SITE}.crt", "key": f"certs/{SITE}.key", "ca": "certs/ca.crt"},
            "coordinators": [{"identity": "coordinator", "token_sha256": hash_token(TOKEN)},
                             {"identity": "stranger", "token_sha256": hash_token("stranger-token")}],
            "federations": ["fuzzers"],
            "worker": {"max_message_mb": 1, "max_restarts": 3, "restart_window_s": 300},
            "datasets": {"train": {"path": "data/train.tfrecord", "schema_file": "schema.json"}},
        })
        self.state = root / "state"
        self.plan_id = self._approve_a_plan(root)
        self.stderr_path = root / "site.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen([str(TFFPROD), "site", "serve", "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                         cwd=root, start_new_session=True)
        self.worker_pid: Optional[int] = None
        self._channels: list[grpc.Channel] = []
        try:
            info = self._wait_ready()
            self.address = info["address"]
            self.worker_pid = self._worker_pid()
            self.good = self.channel()
        except BaseException:
            self.close()
            raise

    def _approve_a_plan(self, root: Path) -> str:
        """A plan the site approves (a hand-built computation: releases of it reach the worker and fail there)."""
        from tests.helpers.site_plans import computation_entry, site_computation
        from tffprod.data.files import content_hash
        from tffprod.protocol.plan_document import PLAN_FORMAT, canonical_id
        from tffprod.executors.approvals import approve_at_site
        from tffprod.executors.config import load_site_config

        body = {"format": PLAN_FORMAT, "created_at": "2026-11-30T00:00:00+00:00",
                "session": {"name": "fuzz", "rounds": 3, "seed": 0, "min_sites": 1, "federation": "fuzzers"},
                "spec": {}, "task": {}, "privacy": {"mechanism": "none"},
                "datasets": [{"role": "train", "ref": f"{SITE}/train:1", "site": SITE, "name": "train",
                              "content_hash": content_hash(root / "data" / "train.tfrecord"), "num_examples": 8}],
                "coordinators": {SITE: "coordinator"}, "computations": [computation_entry(site_computation("fuzz"))]}
        (root / "plan.json").write_text(json.dumps({**body, "plan_id": canonical_id(body)}))
        return approve_at_site(root / "plan.json", load_site_config(self.config)).plan_id

    def _wait_ready(self, timeout_s: float = 60.0) -> dict:
        site_file = self.state / "site.json"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"site serve exited {self.proc.returncode}: {self.stderr()}")
            try:
                return json.loads(site_file.read_text())
            except (OSError, ValueError):
                time.sleep(0.1)
        raise AssertionError(f"site serve not ready after {timeout_s:g} s: {self.stderr()}")

    def _worker_pid(self) -> Optional[int]:
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if child.name() == "worker_binary" and child.status() != psutil.STATUS_ZOMBIE:
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        return None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def credentials(self, who: str = "coordinator", *, folder: str = "certs") -> grpc.ChannelCredentials:
        read = lambda name: (self.root / folder / name).read_bytes()  # noqa: E731
        return grpc.ssl_channel_credentials(self._ca(), read(f"{who}.key"), read(f"{who}.crt"))

    def _ca(self) -> bytes:
        return (self.certs / "ca.crt").read_bytes()

    def channel(self, credentials: Optional[grpc.ChannelCredentials] = None) -> grpc.Channel:
        channel = grpc.secure_channel(self.address, credentials or self.credentials(), options=MESSAGE_LIMITS)
        self._channels.append(channel)
        return channel

    def check_still_serving(self) -> None:
        """The process is alive, its worker was not replaced, and a good caller is served correctly."""
        assert self.proc.poll() is None, f"the site process died ({self.proc.returncode}): {self.stderr()}"
        assert self._worker_pid() == self.worker_pid, "the worker died and was restarted during the batch"
        info = json.loads(self.good.unary_unary(SITE_INFO_METHOD)(b"", metadata=GOOD, timeout=CALL_TIMEOUT_S))
        assert info["site"] == SITE and info["health"]["worker"] == "up"
        assert [entry["name"] for entry in info["catalog"]] == ["train"]
        assert info["computations"] == "approved" and info["federations"] == ["fuzzers"]
        with pytest.raises(grpc.RpcError) as info:  # no plan is approved here: refused for that reason
            self.good.unary_unary(RELEASE_METHOD)(good_request(RELEASE_METHOD), metadata=GOOD,
                                                  timeout=CALL_TIMEOUT_S)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "is not approved here" in info.value.details()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.worker_pid is not None and psutil.pid_exists(self.worker_pid):
            try:
                if psutil.Process(self.worker_pid).status() != psutil.STATUS_ZOMBIE:
                    os.killpg(self.worker_pid, signal.SIGKILL)  # only if the site failed to stop it
            except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
                pass


GOOD = (("authorization", f"Bearer {TOKEN}"), (FEDERATION_HEADER, "fuzzers"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    s = FuzzedSite(tmp_path_factory.mktemp("fuzzed-site"))
    yield s
    s.close()
    assert not psutil.pid_exists(s.proc.pid) or psutil.Process(s.proc.pid).status() == psutil.STATUS_ZOMBIE


# ---------------------------------------------------------------- sending hostile calls


def refused(batch: str, channel: grpc.Channel, method: str, request: bytes,
            metadata: Iterable[tuple[str, Any]] = GOOD, *, may_serve: bool = False) -> grpc.StatusCode:
    """Send one hostile call; it must end in a refusal status, promptly, without a traceback.

    ``may_serve``: an OK answer is right too (the input turned out to be a valid request the
    site may serve, e.g. random bytes that parse as a ``DisposeExecutorRequest``).
    """
    COUNTS[batch] = COUNTS.get(batch, 0) + 1
    started = time.monotonic()
    try:
        response = channel.unary_unary(method)(request, metadata=tuple(metadata), timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as e:
        code, details = e.code(), e.details() or ""
    else:
        code, details = grpc.StatusCode.OK, ""
        if not may_serve:
            problem(f"{method}: a hostile request was served ({len(response)} bytes): {request[:200]!r}")
    STATUSES[code.name] = STATUSES.get(code.name, 0) + 1
    if code is not grpc.StatusCode.OK and code not in REFUSALS:
        problem(f"{method}: {code.name} after {time.monotonic() - started:.1f} s: {details[:300]}")
    if "Traceback" in details or 'File "' in details or "\n" in details.strip():
        problem(f"{method}: a traceback or multi-line status leaked: {details!r}")
    return code


def problem(text: str) -> None:
    PROBLEMS.append(text)
    raise AssertionError(text)


def servable(method: str, body: bytes) -> bool:
    """Whether a site under approval may answer ``body`` with OK: only site info (which ignores its
    request body). No plan is approved here, so no release is, and the executor protocol is not served."""
    return method.rsplit("/", 1)[-1] == "Get"


def good_request(method: str) -> bytes:
    """A valid request for ``method`` (naming executors and values that do not exist)."""
    executor = executor_pb2.ExecutorId(id="no-such-executor")
    ref = executor_pb2.ValueRef(id="no-such-value")
    name = method.rsplit("/", 1)[1]
    messages = {
        "GetExecutor": executor_pb2.GetExecutorRequest(cardinalities=[executor_pb2.Cardinality(
            placement=computation_pb2.Placement(uri="clients"), cardinality=3)]),
        "CreateValue": executor_pb2.CreateValueRequest(executor=executor, value=clients_strings(b"train", b"train")),
        "CreateCall": executor_pb2.CreateCallRequest(executor=executor, function_ref=ref, argument_ref=ref),
        "CreateStruct": executor_pb2.CreateStructRequest(executor=executor, element=[
            executor_pb2.CreateStructRequest.Element(name="a", value_ref=ref)]),
        "CreateSelection": executor_pb2.CreateSelectionRequest(executor=executor, source_ref=ref, index=3),
        "Compute": executor_pb2.ComputeRequest(executor=executor, value_ref=ref),
        "Dispose": executor_pb2.DisposeRequest(executor=executor, value_ref=[ref, ref]),
        "DisposeExecutor": executor_pb2.DisposeExecutorRequest(executor=executor),
        "Release": release_pb2.ReleaseRequest(plan_id="0" * 64, role="train", round=1,
                                              datasets=[release_pb2.DatasetSelection(name="train")]),
        "Get": None,
    }
    message = messages[name]
    return b"" if message is None else message.SerializeToString()


def after_batch(site: FuzzedSite, batch: str, minimum: int) -> None:
    assert COUNTS.get(batch, 0) >= minimum, f"{batch}: only {COUNTS.get(batch, 0)} calls sent"
    site.check_still_serving()


# ---------------------------------------------------------------- 1. garbage bytes


def test_the_site_serves_a_good_caller(site: FuzzedSite) -> None:
    """The baseline every batch is checked against (and proof the checks can pass)."""
    site.check_still_serving()


def test_random_bytes_to_every_method(site: FuzzedSite) -> None:
    channel = site.channel()

    @settings(FUZZ, max_examples=700)
    @given(method=st.sampled_from(METHODS), body=st.binary(max_size=2048))
    def fuzz(method: str, body: bytes) -> None:
        refused("random bytes", channel, method, body, may_serve=servable(method, body))

    fuzz()
    after_batch(site, "random bytes", 700)


def test_empty_truncated_and_bit_flipped_messages(site: FuzzedSite) -> None:
    channel = site.channel()

    @settings(FUZZ, max_examples=700)
    @given(method=st.sampled_from(METHODS[:-1]), data=st.data())
    def fuzz(method: str, data: st.DataObject) -> None:
        valid = good_request(method)
        cut = data.draw(st.integers(0, max(len(valid) - 1, 0)), label="cut")
        body = bytearray(valid[:cut] if data.draw(st.booleans(), label="truncate") else valid)
        for _ in range(data.draw(st.integers(0, 4), label="flips")):
            if body:
                body[data.draw(st.integers(0, len(body) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        body += data.draw(st.binary(max_size=16), label="tail")
        refused("truncated", channel, method, bytes(body), may_serve=servable(method, bytes(body)))

    fuzz()
    after_batch(site, "truncated", 500)


# ---------------------------------------------------------------- 2. well-formed hostile protos


DTYPES = [v for v in data_type_pb2.DataType.values()] + [9999, -1]
PLACEMENTS = ["clients", "server", "", "CLIENTS", "clients/../../etc", "\u00e9\u00e8", "x" * 300]
REFERENCES = [b"train", b"train#0", b"train#", b"train#-1", b"train#99999999999999999999", b"/etc/passwd",
              b"../data/train.tfrecord", b"", b"\x00", b"\xff\xfe", b"train\x00", b"#", b"train#0#0"]
LONG = st.integers(1000, 20000).map(lambda n: "x" * n)  # long strings, built (hypothesis would print them)


def arrays() -> st.SearchStrategy:
    shape = st.builds(array_pb2.ArrayShape, dim=st.lists(st.integers(-2**40, 2**40), max_size=5),
                      unknown_rank=st.booleans())
    content = st.builds(lambda dtype, shape, raw: array_pb2.Array(dtype=dtype, shape=shape, content=raw),
                        st.sampled_from(DTYPES), shape, st.binary(max_size=64))
    strings = st.builds(lambda shape, values: array_pb2.Array(
        dtype=data_type_pb2.DT_STRING, shape=shape, string_list=array_pb2.Array.BytesList(value=values)),
        shape, st.lists(st.sampled_from(REFERENCES) | st.binary(max_size=20) | LONG.map(str.encode), max_size=4))
    floats = st.builds(lambda dtype, shape, values: array_pb2.Array(
        dtype=dtype, shape=shape, float32_list=array_pb2.Array.FloatList(value=values)),
        st.sampled_from(DTYPES), shape, st.lists(st.floats(width=32), max_size=8))
    return st.one_of(content, strings, floats).map(lambda a: executor_pb2.Value(array=a))


def computations() -> st.SearchStrategy:
    def garbage(raw: bytes, kind: str) -> executor_pb2.Value:
        comp = computation_pb2.Computation()
        if kind == "tensorflow":
            comp.tensorflow.graph_def.value = raw  # Any with garbage bytes
            comp.tensorflow.graph_def.type_url = "type.googleapis.com/tensorflow.GraphDef"
        elif kind == "data":
            comp.data.content.value = raw
        elif kind == "intrinsic":
            comp.intrinsic.uri = raw.decode("latin-1")
        else:
            comp.reference.name = raw.decode("latin-1")
        return executor_pb2.Value(computation=comp)

    return st.builds(garbage, st.binary(max_size=256), st.sampled_from(["tensorflow", "data", "intrinsic", "ref"]))


def sequences() -> st.SearchStrategy:
    return st.builds(lambda raw: executor_pb2.Value(sequence=executor_pb2.Value.Sequence(
        element_type=computation_pb2.Type(tensor=computation_pb2.TensorType(dtype=data_type_pb2.DT_INT64)),
        serialized_graph_def=raw)), st.binary(max_size=128))


def values() -> st.SearchStrategy:
    def federated(members: list, uri: str, all_equal: bool) -> executor_pb2.Value:
        spec = computation_pb2.FederatedType(
            placement=computation_pb2.PlacementSpec(value=computation_pb2.Placement(uri=uri)), all_equal=all_equal)
        return executor_pb2.Value(federated=executor_pb2.Value.Federated(type=spec, value=members))

    def struct(members: list, names: list) -> executor_pb2.Value:
        return executor_pb2.Value(struct=executor_pb2.Value.Struct(element=[
            executor_pb2.Value.Struct.Element(name=n, value=m) for m, n in zip(members, names + [""] * len(members))]))

    leaves = arrays() | sequences() | computations() | st.just(executor_pb2.Value())
    return st.recursive(leaves, lambda inner: st.one_of(
        st.builds(federated, st.lists(inner, max_size=4), st.sampled_from(PLACEMENTS), st.booleans()),
        st.builds(struct, st.lists(inner, max_size=4), st.lists(st.text(max_size=8), max_size=4)),
    ), max_leaves=12)


IDS = st.sampled_from(["", "no-such-executor", "0", "-1", "\u2603", "../../", "executor\x00"]) | LONG


def tensors() -> st.SearchStrategy:
    return st.builds(lambda d, shape, content, strings: release_pb2.Tensor(dtype=d, shape=shape, content=content,
                                                                          strings=strings),
                     st.sampled_from(["float32", "int64", "string", "bool", "complex64", "", "\u2603", "object"]),
                     st.lists(st.integers(-2**62, 2**62), max_size=4), st.binary(max_size=64),
                     st.lists(st.binary(max_size=16), max_size=3))


APPROVED = "approved"  # stands for the plan the site approved (its id is known only once the site is up)


def release_requests() -> st.SearchStrategy:
    selection = st.builds(lambda n, c: release_pb2.DatasetSelection(name=n, clients=c),
                          st.sampled_from(["train", "/etc/passwd", "train#0", "../train", ""]) | st.text(max_size=20),
                          st.lists(st.integers(0, 2**32 - 1), max_size=4))
    return st.builds(lambda p, r, n, d, t: release_pb2.ReleaseRequest(plan_id=p, role=r, round=n, datasets=d, state=t),
                     st.just(APPROVED) | IDS | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
                     st.sampled_from(["train", "eval", "", "TRAIN", "compute"]), st.integers(0, 2**32 - 1),
                     st.lists(selection, max_size=3), st.lists(tensors(), max_size=4))


def hostile_requests() -> st.SearchStrategy:
    executor = st.builds(lambda i: executor_pb2.ExecutorId(id=i), IDS)
    ref = st.builds(lambda i: executor_pb2.ValueRef(id=i), IDS | st.text(max_size=20))
    return st.one_of(
        st.tuples(st.just("Release"), release_requests()),
        st.tuples(st.just("CreateValue"), st.builds(lambda e, v: executor_pb2.CreateValueRequest(executor=e, value=v),
                                                    executor, values())),
        st.tuples(st.just("CreateCall"), st.builds(lambda e, f, a: executor_pb2.CreateCallRequest(
            executor=e, function_ref=f, argument_ref=a), executor, ref, ref)),
        st.tuples(st.just("CreateStruct"), st.builds(lambda e, refs: executor_pb2.CreateStructRequest(
            executor=e, element=[executor_pb2.CreateStructRequest.Element(value_ref=r) for r in refs]),
            executor, st.lists(ref, max_size=5))),
        st.tuples(st.just("CreateSelection"), st.builds(lambda e, r, i: executor_pb2.CreateSelectionRequest(
            executor=e, source_ref=r, index=i), executor, ref, st.integers(0, 2**31 - 1))),
        st.tuples(st.just("Compute"), st.builds(lambda e, r: executor_pb2.ComputeRequest(executor=e, value_ref=r),
                                                executor, ref)),
        st.tuples(st.just("Dispose"), st.builds(lambda e, refs: executor_pb2.DisposeRequest(
            executor=e, value_ref=refs), executor, st.lists(ref, max_size=5))),
        st.tuples(st.just("DisposeExecutor"), st.builds(lambda e: executor_pb2.DisposeExecutorRequest(executor=e),
                                                        executor)),
    )


def test_hostile_protos(site: FuzzedSite) -> None:
    """Well-formed messages naming nothing that exists, or carrying data and code the site must refuse."""
    channel = site.channel()

    @settings(FUZZ, max_examples=1000)
    @given(request=hostile_requests())
    def fuzz(request: tuple[str, Any]) -> None:
        method, message = request
        if method == "Release" and message.plan_id == APPROVED:
            message.plan_id = site.plan_id
        body = message.SerializeToString()
        full = RELEASE_METHOD if method == "Release" else f"/{EXECUTOR_SERVICE}/{method}"
        refused("hostile protos", channel, full, body, may_serve=servable(full, body))

    fuzz()
    after_batch(site, "hostile protos", 900)


@pytest.mark.parametrize("depth", [5, 20, 32, 34, 50, 1000, 20000])
def test_deep_nesting(site: FuzzedSite, depth: int) -> None:
    """A path inside ``depth`` alternating CLIENTS values and structs (3 message levels per struct, 2
    per federated value): below, at and far past protobuf's recursion limit (100 levels). Built as
    wire bytes, since the Python runtime will not build what it cannot parse."""
    channel = site.channel()
    clients_type = clients_strings().federated.type.SerializeToString()
    value = string_array(b"/etc/passwd").SerializeToString()  # not a catalog name: never served
    for i in range(depth):
        if i % 2:  # Value{struct: Struct{element: Element{value: V}}}
            element = b"\x12" + _varint(len(value)) + value
            struct = b"\x0a" + _varint(len(element)) + element
            value = b"\x1a" + _varint(len(struct)) + struct
        else:  # Value{federated: Federated{type: CLIENTS, value: V}}
            federated = b"\x0a" + _varint(len(clients_type)) + clients_type + b"\x12" + _varint(len(value)) + value
            value = b"\x2a" + _varint(len(federated)) + federated
    body = b"\x0a" + _varint(len(value)) + value  # CreateValueRequest{value: V}
    for method in ("CreateValue", "Compute", "CreateStruct", "Dispose"):
        code = refused("deep nesting", channel, f"/{EXECUTOR_SERVICE}/{method}", body,
                       may_serve=method != "CreateValue" and servable(method, body))
        assert code is grpc.StatusCode.UNIMPLEMENTED, code  # the executor protocol is not served at all
    site.check_still_serving()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# ---------------------------------------------------------------- 3. oversized messages


@pytest.mark.parametrize("size", [LIMIT_BYTES + 1, 4 * LIMIT_BYTES, 16 * LIMIT_BYTES])
def test_oversized_messages_are_resource_exhausted(site: FuzzedSite, size: int) -> None:
    """Above the site's limit (its worker's ``max_message_mb``) the gateway refuses before reading on."""
    channel = site.channel()
    for method in METHODS:  # the executor protocol is refused before its body is read, as unserved
        expected = {grpc.StatusCode.RESOURCE_EXHAUSTED} if method in (RELEASE_METHOD, SITE_INFO_METHOD) else \
            {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED}
        assert refused("oversized", channel, method, os.urandom(size)) in expected
    big = release_pb2.ReleaseRequest(plan_id="0" * 64, role="train", state=[release_pb2.Tensor(
        dtype="float32", shape=[size // 4], content=os.urandom(size // 4 * 4))])
    assert refused("oversized", channel, RELEASE_METHOD, big.SerializeToString()) is grpc.StatusCode.RESOURCE_EXHAUSTED
    site.check_still_serving()


def test_a_message_just_under_the_limit_is_read(site: FuzzedSite) -> None:
    """The limit refuses only what is over it: just under it, the site reads the request and judges it (here:
    larger than any approved plan allows)."""
    channel = site.channel()
    payload = b"x" * (LIMIT_BYTES - 1024)
    body = release_pb2.ReleaseRequest(plan_id="0" * 64, role="train", round=1, state=[release_pb2.Tensor(
        dtype="float32", shape=[len(payload) // 4], content=payload)]).SerializeToString()
    assert len(body) < LIMIT_BYTES
    assert refused("oversized", channel, RELEASE_METHOD, body) is grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as info:  # judged by the site (no plan allows it), not by gRPC's limit
        channel.unary_unary(RELEASE_METHOD)(body, metadata=GOOD, timeout=CALL_TIMEOUT_S)
    assert "larger than any approved plan's" in info.value.details()


# ---------------------------------------------------------------- 4. malformed metadata


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)


def metadata_sets() -> st.SearchStrategy:
    token = st.one_of(HEADER_TEXT, st.just(TOKEN + " "), st.just(TOKEN[:-1]), st.just(TOKEN.upper()),
                      st.integers(1000, 6000).map(lambda n: "x" * n))
    authorization = st.one_of(
        st.builds(lambda t: ("authorization", f"Bearer {t}"), token),
        st.builds(lambda s, t: ("authorization", f"{s} {t}"), st.sampled_from(["Basic", "bearer", "", "BEARER"]),
                  st.sampled_from([TOKEN, ""]) | token),
        st.builds(lambda t: ("authorization", t), HEADER_TEXT),
    )
    other = st.one_of(
        st.builds(lambda f: (FEDERATION_HEADER, f),
                  st.sampled_from(["fuzzers", "others", "", "FUZZERS"]) | HEADER_TEXT),
        st.builds(lambda i: (IDENTITY_HEADER, i), st.sampled_from(["coordinator", "stranger", "root"])),
        st.builds(lambda k, v: (k, v), st.from_regex(r"\Ax-[a-z0-9-]{1,20}\Z"), HEADER_TEXT),
        st.builds(lambda v: ("x-fuzz-bin", v), st.binary(max_size=200)),
    )
    return st.lists(authorization | other, max_size=5)


def test_malformed_metadata(site: FuzzedSite) -> None:
    """Good requests with wrong, missing, repeated or mangled credentials and federation headers."""
    channel = site.channel()

    def is_good(metadata: list[tuple[str, Any]]) -> bool:
        auths = {value for key, value in metadata if key == "authorization"}
        feds = {value for key, value in metadata if key == FEDERATION_HEADER}
        token_ok = len(auths) == 1 and (lambda s: s[0].lower() == "bearer" and s[2].strip() == TOKEN)(
            next(iter(auths)).partition(" "))
        return token_ok and feds in ({"fuzzers"}, set())

    @settings(FUZZ, max_examples=600)
    @given(method=st.sampled_from(METHODS), metadata=metadata_sets())
    def fuzz(method: str, metadata: list[tuple[str, Any]]) -> None:
        if is_good(metadata):
            return  # a valid caller after all (hypothesis can build one)
        code = refused("metadata", channel, method, good_request(method), metadata)
        allowed = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL,
                   grpc.StatusCode.RESOURCE_EXHAUSTED}
        if method not in (RELEASE_METHOD, SITE_INFO_METHOD):  # not served: refused before any header is read
            allowed.add(grpc.StatusCode.UNIMPLEMENTED)
        assert code in allowed, code

    fuzz()
    after_batch(site, "metadata", 300)


@pytest.mark.parametrize("size", [4 * 1024, 64 * 1024, 1024 * 1024])
def test_huge_header_values(site: FuzzedSite, size: int) -> None:
    """Long credentials are refused; headers past gRPC's metadata limit (16 KB) end the call, not the site."""
    channel = site.channel()
    method = METHODS[0]
    others = lambda key: tuple(h for h in GOOD if h[0] != key)  # noqa: E731
    refused("metadata", channel, method, good_request(method), (("authorization", "Bearer " + "a" * size),
                                                                *others("authorization")))
    refused("metadata", channel, method, good_request(method), ((FEDERATION_HEADER, "f" * size),
                                                                *others(FEDERATION_HEADER)))
    code = refused("metadata", channel, method, good_request(method), (*GOOD, ("x-padding", "p" * size)),
                   may_serve=size < 8 * 1024)
    if size > 16 * 1024:
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, code
    site.check_still_serving()


def test_the_right_token_from_another_identity_is_refused(site: FuzzedSite) -> None:
    """``stranger`` has a certificate from the right CA and a token of its own: the coordinator's is not it."""
    channel = site.channel(site.credentials("stranger", folder="stranger"))
    for method in METHODS:
        expected = grpc.StatusCode.UNAUTHENTICATED if method in (RELEASE_METHOD, SITE_INFO_METHOD) \
            else grpc.StatusCode.UNIMPLEMENTED  # the executor protocol is not served under approval
        assert refused("metadata", channel, method, good_request(method)) is expected
    site.check_still_serving()


# ---------------------------------------------------------------- 5. the wrong certificates


def _connection_refused(batch: str, make_channel: Callable[[], grpc.Channel]) -> None:
    for method in (METHODS[0], SITE_INFO_METHOD):
        channel = make_channel()
        try:
            code = refused(batch, channel, method, good_request(method))
        finally:
            channel.close()
        assert code is grpc.StatusCode.UNAVAILABLE, code


def test_no_client_certificate(site: FuzzedSite) -> None:
    _connection_refused("certificates", lambda: grpc.secure_channel(
        site.address, grpc.ssl_channel_credentials(site._ca())))
    site.check_still_serving()


def test_a_client_certificate_from_another_ca(site: FuzzedSite) -> None:
    rogue = site.root / "rogue"
    creds = grpc.ssl_channel_credentials(site._ca(), (rogue / "coordinator.key").read_bytes(),
                                         (rogue / "coordinator.crt").read_bytes())
    _connection_refused("certificates", lambda: grpc.secure_channel(site.address, creds))
    site.check_still_serving()


def test_plaintext_against_the_tls_port(site: FuzzedSite) -> None:
    _connection_refused("certificates", lambda: grpc.insecure_channel(site.address))
    site.check_still_serving()


# ---------------------------------------------------------------- the summary


def test_fuzz_summary(site: FuzzedSite, report_line) -> None:
    """Printed to the terminal (CI logs show it): how many hostile inputs, and the site still serves."""
    total = sum(COUNTS.values())
    site.check_still_serving()
    statuses = ", ".join(f"{name} {n}" for name, n in sorted(STATUSES.items(), key=lambda kv: -kv[1]))
    report_line(f"gateway fuzz: {total} inputs, {len(PROBLEMS)} problems, site process and worker alive, "
                f"still serving ({statuses})")
    assert not PROBLEMS, PROBLEMS[:5]
    if len(COUNTS) == 7:  # every batch ran (not a -k selection): random bytes ... certificates
        assert total >= 3000, COUNTS
