"""Attacks on a site by a coordinator holding a valid certificate and token (issue: typed site protocol).

One real ``tffprod site serve`` process (mTLS, ``computations = "approved"``) with an approved DP
plan (clip 1.0, train and eval). The attacker talks to it with the coordinator's own credentials.
Each attack must be refused (or, for the state attack, released only within the plan's bound), the
site must keep serving an honest release, nothing may be charged, and no response or the site's
audit log may contain the site's key or data bytes. The module reports one summary line, printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tomllib

import grpc
import numpy as np
import psutil
import pytest
from click.testing import CliRunner

from tffprod.cli.main import cli
from tffprod.sites.connection import SiteConnection
from tffprod.examples import digits
from tffprod.protocol.plan_document import load_plan
from tffprod.security.certs import issue
from tffprod.executors.config import hash_token, load_site_config, write_site_config
from tffprod.executors.ledger import LEDGER_FILE, SiteLedger
from tffprod.protocol.protos import computation_pb2, executor_pb2
from tffprod.executors.release import RELEASE_METHOD
from tffprod.sessions.approval import coordinator_identities, make_plan, write_plan
from tffprod.protocol import release_pb2
from tffprod.protocol.tensors import from_numpy, to_numpy
from tffprod.protocol.terms import ReleaseTerms
from tffprod.sessions.planning import plan_session
from tffprod.sessions.spec import SessionSpec

from .conftest import running_federation, worker_children

pytestmark = pytest.mark.e2e

TASK = "tffprod.examples.digits:task"
SITE = digits.SITES[0]
CLIP = 1.0
TALLY = {"classes": set(), "attempts": 0, "released": 0, "leaked": 0, "honest": 0}


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    paths = digits.prepare(root / "data")
    datasets = {SITE: {"train": {"path": paths[SITE]["train"], "task": TASK},
                       "test": {"path": paths[SITE]["test"], "task": TASK}}}
    with running_federation(root, datasets, computations="approved") as (fed, registry):
        spec = SessionSpec.from_dict({
            "name": "attacked", "task": TASK, "datasets": [f"{SITE}/train"], "eval_datasets": [f"{SITE}/test"],
            "rounds": 3, "seed": 0, "backend": "remote",
            "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": CLIP, "delta": 1e-5}})
        document = make_plan(plan_session(spec, registry=registry),
                             coordinators=coordinator_identities(registry, [SITE]))
        plan_path = write_plan(document, root / "plan.json")
        result = CliRunner().invoke(cli, ["site", "approve", str(plan_path), "--config",
                                          str(fed.site_config_path(SITE))])
        assert result.exit_code == 0, result.output
        _add_rival(fed, root)
        channel = SiteConnection.from_registry(registry.get_site(SITE)).channel()
        config = load_site_config(fed.site_config_path(SITE))
        secrets = [config.tls.key.read_bytes(), paths[SITE]["train"].read_bytes()]
        rival = _rival_channel(fed, fed.addresses[SITE], root)
        try:
            yield fed, channel, load_plan(plan_path), config, secrets, rival
        finally:
            channel.close()
            rival.close()


@pytest.fixture(autouse=True)
def no_leaked_workers(attacked):
    """conftest's leak check, allowing for the worker the site restarts itself (one test kills it)."""
    fed = attacked[0]
    before = {p.pid for p in worker_children()}
    yield
    site = {p.pid for p in psutil.Process(fed.pids()[SITE]).children(recursive=True) if p.name() == "worker_binary"}
    assert len(site) == 1
    assert [p.pid for p in worker_children() if p.pid not in before | site] == []


def _add_rival(fed, root):
    """A second coordinator identity the site serves, with a certificate of the site's CA and its own token."""
    issue("rival", ca_dir=fed.certs_dir / "ca", out_dir=root / "rival")
    (root / "rival" / "token").write_text("rival-token-0123456789")
    path = fed.site_config_path(SITE)
    config = tomllib.loads(path.read_text())
    config["coordinators"].append({"identity": "rival", "token_sha256": hash_token("rival-token-0123456789")})
    fed.stop_site(SITE)
    write_site_config(path, config)
    fed.start_site(SITE)


def _rival_channel(fed, registry_address, root):
    rival = root / "rival"
    creds = grpc.ssl_channel_credentials((fed.certs_dir / "ca" / "ca.crt").read_bytes(),
                                         (rival / "rival.key").read_bytes(), (rival / "rival.crt").read_bytes())
    creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials("rival-token-0123456789"))
    return grpc.secure_channel(registry_address, creds)


@contextlib.contextmanager
def _changed(path, content: bytes, *, keep_mtime: bool):
    """``path`` holds ``content`` inside the block (with its old modification time if ``keep_mtime``),
    then exactly what it held before."""
    original, stat = path.read_bytes(), path.stat()
    path.write_bytes(content)
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    try:
        yield original
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _terms(plan, role):
    entry = next(c for c in plan.computations if c["role"] == role)
    return ReleaseTerms(entry, plan.computation_bytes(role))


def _state(plan, role, scale=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return [from_numpy((rng.standard_normal(leaf.shape) * scale).astype(leaf.dtype)) for leaf in
            _terms(plan, role).free]


def _request(plan, role="train", *, round_num=1, datasets=("train",), state=None, plan_id=None):
    selection = [release_pb2.DatasetSelection(name=name) for name in datasets]
    return release_pb2.ReleaseRequest(plan_id=plan_id or plan.plan_id, role=role,
                                      round=round_num if role == "train" else 0, datasets=selection,
                                      state=_state(plan, role) if state is None else state)


def _leaks(text: bytes, secrets) -> bool:
    """Whether ``text`` holds any 24-byte window of a secret (key or data file)."""
    for secret in secrets:
        for i in range(0, max(1, len(secret) - 24), 24):
            if secret[i:i + 24] in text:
                return True
    return False


def _attack(attacked, kind: str, request, *, method: str = RELEASE_METHOD, channel=None) -> grpc.RpcError:
    fed, ours, plan, config, secrets, rival = attacked
    channel = channel or ours
    TALLY["classes"].add(kind)
    TALLY["attempts"] += 1
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    try:
        channel.unary_unary(method)(raw, timeout=60)
    except grpc.RpcError as e:
        if _leaks((e.details() or "").encode(), secrets):
            TALLY["leaked"] += 1
        return e
    TALLY["released"] += 1
    raise AssertionError(f"{kind}: the site released")


def _served(config, plan) -> int:
    ledger = SiteLedger(config.state_dir / LEDGER_FILE, site=SITE, budgets={})
    try:
        return ledger.served(plan.plan_id)
    finally:
        ledger.close()


def test_code_sent_in_any_form_never_reaches_the_worker(attacked):
    """Class 1 (code inside values) and 5 (shared executors): the executor protocol is not served."""
    comp = computation_pb2.Computation(reference=computation_pb2.Reference(name="read_file"))
    value = executor_pb2.Value(struct=executor_pb2.Value.Struct(element=[
        executor_pb2.Value.Struct.Element(value=executor_pb2.Value(computation=comp))]))
    for method, message in [("CreateValue", executor_pb2.CreateValueRequest(value=value)),
                            ("GetExecutor", executor_pb2.GetExecutorRequest()),
                            ("Compute", executor_pb2.ComputeRequest()),
                            ("DisposeExecutor", executor_pb2.DisposeExecutorRequest())]:
        err = _attack(attacked, "code", message, method=f"/tensorflow_federated.v0.ExecutorGroup/{method}")
        assert err.code() is grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("datasets", [("/etc/passwd",), ("../train",), ("train#0",), ("test",), ("nope",)])
def test_data_outside_the_plan_cannot_be_named(attacked, datasets):
    """Class 2: paths, other catalog datasets, clients of a whole dataset, evaluation data for training."""
    err = _attack(attacked, "data", _request(attacked[2], datasets=datasets))
    assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)


def test_the_state_cannot_carry_privacy_parameters_and_the_release_stays_within_the_clip(attacked):
    """Class 3: pinned leaves (clip, learning rate) cannot be sent; huge weights still give a release whose
    clipped sum is within the plan's clip (checked here on what the site returned)."""
    fed, channel, plan, config, secrets, rival = attacked
    terms = _terms(plan, "train")
    extra = _state(plan, "train") + [from_numpy(np.float32(100.0))]  # a 'clip' appended to the state
    err = _attack(attacked, "state", _request(plan, state=extra))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "free tensors" in err.details()
    wrong = _state(plan, "train")
    wrong[0] = from_numpy(np.zeros((3, 3), np.float32))
    assert _attack(attacked, "state", _request(plan, state=wrong)).code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _served(config, plan) == 0  # nothing charged so far
    raw = channel.unary_unary(RELEASE_METHOD)(_request(plan, state=_state(plan, "train", scale=1000.0))
                                              .SerializeToString(), timeout=120)
    response = release_pb2.ReleaseResponse.FromString(raw)
    update = [to_numpy(t) for t, leaf in zip(response.result, terms.signature.result) if leaf.path.startswith("1/")]
    norm = float(np.sqrt(sum(np.sum(np.square(u.astype(np.float64))) for u in update)))
    assert norm <= CLIP * 1.0001, norm
    TALLY["honest"] += 1
    assert _served(config, plan) == 1 and response.round == 1


def test_evaluation_is_no_side_door(attacked):
    """Class 4: evaluation reads only the plan's evaluation datasets, whole, once each."""
    plan = attacked[2]
    for datasets in [("train",), ("test", "train")]:
        err = _attack(attacked, "eval", _request(plan, "eval", datasets=datasets))
        assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
    fed, channel, plan, config, secrets, rival = attacked
    first = _request(plan, "eval", datasets=("test",), state=_state(plan, "eval", seed=1))
    channel.unary_unary(RELEASE_METHOD)(first.SerializeToString(), timeout=120)  # the plan's one evaluation
    repeat = release_pb2.ReleaseResponse.FromString(channel.unary_unary(RELEASE_METHOD)(first.SerializeToString(),
                                                                                        timeout=120))
    assert repeat.repeat  # the identical request again: a repeat, nothing new
    err = _attack(attacked, "eval", _request(plan, "eval", datasets=("test",), state=_state(plan, "eval", seed=2)))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED and "already evaluated" in err.details()


def test_another_identity_cannot_use_this_coordinators_plan(attacked):
    """Class 5: a second identity the site serves (its own certificate and token) gets nothing of a plan
    bound to the first; there are no executor or value ids to share."""
    fed, channel, plan, config, secrets, rival = attacked
    err = _attack(attacked, "identity", _request(plan, round_num=1), channel=rival)
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED and "approved for another coordinator" in err.details()


def test_a_release_larger_than_the_plan_allows_is_refused_unread(attacked):
    """Class 6: the plan's types bound a release's size; a larger one is refused before it is parsed."""
    plan = attacked[2]
    huge = release_pb2.Tensor(dtype="float32", shape=[16 * 2**20], content=bytes(64 * 2**20))
    err = _attack(attacked, "memory", _request(plan, state=[huge]))  # one message: over gRPC's 4 MB limit
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    fed, channel, plan, config, secrets, rival = attacked
    header = _request(plan, state=[release_pb2.Tensor(dtype=t.dtype, shape=t.shape) for t in _state(plan, "train")])
    pieces = [release_pb2.ReleaseChunk(header=header)]
    pieces += [release_pb2.ReleaseChunk(data=bytes(2**20))] * 64  # 64 MB streamed: refused after the plan's size
    TALLY["attempts"] += 1
    with pytest.raises(grpc.RpcError) as info:
        channel.stream_unary("/tffprod.site.v1.Release/ReleaseStream")(
            iter([p.SerializeToString() for p in pieces]), timeout=60)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "more than the plan's" in info.value.details()


def test_the_worker_is_reachable_only_through_the_gateway(attacked):
    """Class 8: the site's worker listens in a network namespace of its own; its port is closed on this
    host and the socket the gateway uses is in a folder only the site's user can open."""
    fed, channel, plan, config, secrets, rival = attacked
    TALLY["classes"].add("worker")
    (worker,) = [p for p in psutil.Process(fed.pids()[SITE]).children(recursive=True) if p.name() == "worker_binary"]
    port = int(next(a for a in worker.cmdline() if a.startswith("--port=")).split("=")[1])
    for host in ("127.0.0.1", "::1"):
        TALLY["attempts"] += 1
        with pytest.raises(OSError):
            socket.create_connection((host, port), timeout=2).close()
    assert os.readlink(f"/proc/{worker.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    relay = worker.parent().cmdline()  # python -m tffprod.workers.isolation --socket PATH ...
    sock = relay[relay.index("--socket") + 1]
    assert os.stat(os.path.dirname(sock)).st_mode & 0o077 == 0


def test_rounds_and_plans_outside_the_approval_are_refused(attacked):
    plan = attacked[2]
    for request in [_request(plan, round_num=4), _request(plan, round_num=0), _request(plan, plan_id="0" * 64)]:
        err = _attack(attacked, "plan", request)
        assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)


def test_a_failure_in_the_worker_comes_back_as_a_release_id_not_as_its_text(attacked):
    """Class 7: the training file is damaged under the running site (a marker string planted in it), so
    the worker fails reading it. The caller gets the release id and the stage; neither the worker's
    message nor the file's bytes reach the response or the audit log."""
    fed, channel, plan, config, secrets, rival = attacked
    path = config.datasets["train"].path
    original = path.read_bytes()
    marker = b"PLANTED-MARKER-" + bytes(range(65, 91))
    # Same length and modification time: past the site's check that its files did not change.
    with _changed(path, original[:40] + (marker * 4)[:160] + original[200:], keep_mtime=True):
        err = _attack(attacked, "errors", _request(plan, round_num=2, state=_state(plan, "train", seed=3)))
    assert err.code() is grpc.StatusCode.INTERNAL and "failed in the worker at" in err.details()
    assert "the site's log has this id" in err.details() and "corrupt" not in err.details().lower()
    for text in (err.details().encode(), (config.state_dir / "audit.jsonl").read_bytes()):
        assert marker not in text and not _leaks(text, [original])


def test_a_dataset_changed_on_disk_is_not_read(attacked):
    """The plans approved the data's content: a file that changed under the running site is refused."""
    fed, channel, plan, config, secrets, rival = attacked
    path = config.datasets["train"].path
    with _changed(path, path.read_bytes() + b"\0", keep_mtime=False):
        err = _attack(attacked, "data", _request(plan, round_num=2, state=_state(plan, "train", seed=4)))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION and "changed on disk" in err.details()


def test_a_release_after_the_worker_was_restarted_runs_on_a_fresh_executor(attacked):
    """The site keeps its executors between releases; one its restarted worker no longer knows is replaced."""
    import time

    fed, channel, plan, config, secrets, rival = attacked
    (worker,) = [p for p in psutil.Process(fed.pids()[SITE]).children(recursive=True) if p.name() == "worker_binary"]
    worker.kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = [p for p in psutil.Process(fed.pids()[SITE]).children(recursive=True)
                   if p.name() == "worker_binary" and p.pid != worker.pid]
        if workers:
            break
        time.sleep(0.2)
    served = _served(config, plan)
    for _ in range(50):  # until the new worker listens
        try:
            raw = channel.unary_unary(RELEASE_METHOD)(_request(plan, round_num=2, state=_state(plan, "train", seed=7))
                                                      .SerializeToString(), timeout=120)
            break
        except grpc.RpcError as e:
            assert e.code() is grpc.StatusCode.UNAVAILABLE, e.details()
            time.sleep(0.2)
    assert release_pb2.ReleaseResponse.FromString(raw).round == served + 1
    TALLY["honest"] += 1


def test_nothing_leaked_and_the_site_still_serves(attacked, request):
    """After every attack: an honest round 2 is released, the audit log holds no key or data bytes."""
    fed, channel, plan, config, secrets, rival = attacked
    served = _served(config, plan)
    raw = channel.unary_unary(RELEASE_METHOD)(_request(plan, round_num=3).SerializeToString(), timeout=120)
    assert release_pb2.ReleaseResponse.FromString(raw).round == served + 1
    TALLY["honest"] += 1
    charged = _served(config, plan) - TALLY["honest"]
    audit = (config.state_dir / "audit.jsonl").read_bytes()
    if _leaks(audit, secrets):
        TALLY["leaked"] += 1
    # Printed at the end of the run (tests/conftest.py), from an xdist worker too.
    request.node.user_properties.append(("summary_line", (
        f"site attacks: {len(TALLY['classes'])} classes, {TALLY['attempts']} attempts, "
        f"{TALLY['released']} released, {charged} charged, {TALLY['leaked']} leaked bytes, site serving")))
    assert TALLY["released"] == 0 and TALLY["leaked"] == 0 and charged == 0
