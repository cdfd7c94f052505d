"""The site's release service: a coordinator asks, the site builds and runs the call itself.

A site that requires approval serves ``tffprod.site.v1.Release`` (``release.proto``)
in place of TFF's executor protocol. A request names an approved plan, a role
(``train``, ``eval`` or ``compute``), a round, the plan's datasets to read (and which clients),
and the free part of the state as tensors. Nothing in it is code, a path, or an
executor id. For each request the site:

0. refuses a request larger than the largest release any approved plan allows, before parsing it;
1. finds the plan's approval for this caller and federation (``PERMISSION_DENIED``
   otherwise) and the computation it stored for the role when it approved the plan;
2. maps the selection to its own files: only datasets the plan names for that
   role at this site; a dataset trained client by client only by client index;
   an evaluation reads exactly one evaluation dataset whole;
3. checks the state exactly against the plan's declared free leaves (dtype, shape,
   finite values) and fills in the pinned leaves (clip, learning rates, noise
   parameters, ...) from the plan, whatever else the caller believes;
4. admits the release through the privacy ledger: a training round while the
   plan has rounds and budget left, an evaluation (or a custom computation) once per dataset; an identical
   request again (a resumed coordinator) is a repeat and costs nothing;
5. runs the call on its worker, on an executor of the site's own for that computation
   (:mod:`tffprod.executors.site_executors`; no caller ever sees, shares or disposes one);
6. checks the result against the computation's result type and, for a DP plan,
   the L2 norm of the clipped sum against clients x clip, before it leaves;
7. for a plan with the noise at the sites (``noise_placement`` distributed or local), adds
   Gaussian noise at the plan's multiplier times the clip to every coordinate of the clipped sum,
   drawn from a stream keyed by the site's secret and the request's digest
   (:mod:`tffprod.privacy.noise`): unpredictable to the caller, identical for an identical request;
8. for a plan with secure aggregation, instead quantizes the result, adds a discrete Gaussian
   noise share to the clipped sum, and masks it all for the round's sum
   (:mod:`tffprod.executors.secagg_site`): the release then reveals nothing on its own;
9. records the release in the ledger and returns the result tensors.

Errors name the step that failed in one line; what the worker said is never
passed on (it could quote data): the caller gets the release id to ask the
site's operator about, and the site's log records the worker's status code.

TF-free.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any, Callable, Iterator, Optional

import grpc

from tffprod.errors import TffprodError
from tffprod.executors.approvals import Approval, ApprovalStore
from tffprod.executors.datarefs import DataRefs, RequestRefused
from tffprod.executors.ledger import SiteLedger
from tffprod.executors.site_executors import SiteExecutors, WorkerStageError
from tffprod.executors.release_noise import ReleaseNoise
from tffprod.protocol import release_pb2
from tffprod.protocol.signature import SignatureError
from tffprod.protocol.tensors import TensorError

__all__ = ["MAX_PIECE_BYTES", "PIECE_BYTES", "RELEASE_METHOD", "RELEASE_SERVICE", "RELEASE_STREAM_METHOD",
           "ReleaseHandler", "release_digest"]

log = logging.getLogger(__name__)

RELEASE_SERVICE = "tffprod.site.v1.Release"
RELEASE_METHOD = f"/{RELEASE_SERVICE}/Release"
RELEASE_STREAM_METHOD = f"/{RELEASE_SERVICE}/ReleaseStream"
# The largest message a site under approval reads (a whole small release, or one streamed piece):
# gRPC refuses a longer one before buffering it.
MAX_PIECE_BYTES = 4 * 2**20 + 64 * 1024
PIECE_BYTES = 2**20  # what a coordinator streams per piece

_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
_REQUEST_SLACK = 64 * 1024  # plan id, role, round, dataset selection (client indices) beyond the state

# Calls the worker: (method, request message, response class, caller's context) -> response message.
WorkerCall = Callable[[str, Any, Any, grpc.ServicerContext], Any]


def release_digest(request: release_pb2.ReleaseRequest, computation_sha256: str) -> str:
    """The hex SHA-256 identifying a release: the computation, role, round, selection and state."""
    h = hashlib.sha256(b"tffprod.release/1\0")
    h.update(bytes.fromhex(computation_sha256))
    h.update(f"{request.role}\0{request.round}\0".encode())
    for selection in request.datasets:
        h.update(selection.name.encode("utf-8", errors="backslashreplace") + b"\0")
        h.update(",".join(str(c) for c in selection.clients).encode() + b"\0")
    for tensor in request.state:
        h.update(hashlib.sha256(tensor.SerializeToString(deterministic=True)).digest())
    return h.hexdigest()


def _refused(code: grpc.StatusCode, site: str, detail: str) -> RequestRefused:
    return RequestRefused(code, f"site {site}: {detail}")


class ReleaseHandler:
    """Answers ``Release`` requests for one site (see the module docstring).

    Args:
        site: the site's name, for messages.
        store: the site's approvals.
        ledger: the site's privacy ledger.
        refs: the catalog's name -> path mapping.
        call_worker: runs one executor-protocol call on the site's worker.
        credentials: the site's TLS ``(key, certificate, CA)`` PEM bytes (None: no secure aggregation).
    """

    def __init__(self, site: str, store: ApprovalStore, ledger: SiteLedger, refs: DataRefs,
                 call_worker: WorkerCall, credentials: Optional[tuple[bytes, bytes, bytes]] = None) -> None:
        self.site = site
        self.store = store
        self.ledger = ledger
        self._refs = refs
        self._executors = SiteExecutors(call_worker)
        self._noise = ReleaseNoise(site, store.folder.parent, credentials)

    def _denied(self, detail: str) -> RequestRefused:
        return _refused(grpc.StatusCode.PERMISSION_DENIED, self.site, detail)

    def _invalid(self, detail: str) -> RequestRefused:
        return _refused(grpc.StatusCode.INVALID_ARGUMENT, self.site, detail)

    def release(self, raw: bytes, identity: Optional[str], federation: Optional[str],
                context: grpc.ServicerContext) -> tuple[bytes, dict[str, Any]]:
        """Handle one serialized ``ReleaseRequest``: the serialized response and the audit fields.

        Raises:
            RequestRefused: with a one-line reason (see the module docstring for the checks).
        """
        limit = self.size_limit()
        if len(raw) > limit:  # refused before it is parsed: no copy of it is made
            raise _refused(grpc.StatusCode.RESOURCE_EXHAUSTED, self.site,
                           f"a release request of {len(raw)} bytes is larger than any approved plan's ({limit})")
        try:
            request = release_pb2.ReleaseRequest.FromString(raw)
        except Exception:
            raise self._invalid("the release request does not parse") from None
        return self._release(request, identity, federation, context)

    def release_stream(self, chunks: Iterator[bytes], identity: Optional[str], federation: Optional[str],
                       context: grpc.ServicerContext) -> tuple[bytes, dict[str, Any]]:
        """Handle a release sent in pieces (``ReleaseChunk``: the request, then its state's contents).

        The plan says how many content bytes its free state has: the site reads the pieces only up
        to that, and refuses a stream with more before reading on (memory stays within the plan's size).

        Raises:
            RequestRefused: as for ``release``; RESOURCE_EXHAUSTED for more content than the plan's state.
        """
        header = self._chunk(next(chunks, None), "header")
        approval = self._approval(header.plan_id, identity, federation)
        terms = self._terms(approval, header.role)
        sizes = self._content_sizes(terms, header)
        content = bytearray()
        for raw in chunks:
            data = self._chunk(raw, "data")
            if len(content) + len(data) > sum(sizes):
                raise _refused(grpc.StatusCode.RESOURCE_EXHAUSTED, self.site,
                               f"the release streams more than the plan's {sum(sizes)} bytes of state")
            content += data
        if len(content) != sum(sizes):
            raise self._invalid(f"the release streamed {len(content)} bytes of state, the plan's is {sum(sizes)}")
        offset = 0
        for tensor, size in zip(header.state, sizes):
            tensor.content, offset = bytes(content[offset:offset + size]), offset + size
        return self._release(header, identity, federation, context)

    def _chunk(self, raw: Optional[bytes], part: str) -> Any:
        """The ``header`` (a ``ReleaseRequest``) or ``data`` (bytes) of one streamed piece."""
        try:
            chunk = release_pb2.ReleaseChunk.FromString(raw if raw is not None else b"")
        except Exception:
            raise self._invalid("a piece of the release does not parse") from None
        if chunk.WhichOneof("part") != part:
            raise self._invalid(f"the release stream has no {part} where one belongs")
        return getattr(chunk, part)

    def _content_sizes(self, terms: Any, header: release_pb2.ReleaseRequest) -> list[int]:
        """Each streamed state tensor's content size, from the plan (its declared dtype and shape)."""
        if len(header.state) != len(terms.free):
            raise self._invalid(f"the plan's {header.role} state has {len(terms.free)} free tensors, "
                                f"got {len(header.state)}")
        for tensor, leaf in zip(header.state, terms.free):
            if tensor.dtype != leaf.dtype or list(tensor.shape) != list(leaf.shape) or tensor.content:
                raise self._invalid(f"state {leaf.path}: expected {leaf.dtype}{list(leaf.shape)} with its content "
                                    "streamed after the request")
        return terms.content_sizes()

    def _release(self, request: release_pb2.ReleaseRequest, identity: Optional[str], federation: Optional[str],
                 context: grpc.ServicerContext) -> tuple[bytes, dict[str, Any]]:
        release_id = secrets.token_hex(8)
        approval = self._approval(request.plan_id, identity, federation)
        terms = self._terms(approval, request.role)
        refs, names = self._selection(approval, request)
        self._check_round(approval, request)
        try:
            state = terms.full_state(request.state)
        except TensorError as e:
            raise self._invalid(str(e)) from None
        digest = release_digest(request, terms.sha256)
        secure = request.role == "train" and "secure_aggregation" in approval.privacy
        if secure:
            self._check_secure_release(approval, request, digest)
        if request.role == "train":
            self.ledger.admit([approval], self.store.all(), digest)
        for name in names if request.role != "train" else ():
            if self.ledger.evaluated(approval.plan_id, name) not in (None, digest):
                raise self._denied(self.ledger.eval_refusal(approval, name).removeprefix(f"site {self.site}: "))
            refusal = self.ledger.eval_budget_refusal(approval, name, self.store.all()) \
                if self.ledger.evaluated(approval.plan_id, name) is None else None
            if refusal:
                raise self._denied(refusal.removeprefix(f"site {self.site}: "))
        result = self._run(terms, state, refs, release_id, context)
        try:
            norm = terms.check_result(result, clients=len(refs))
        except TensorError as e:
            log.warning("site %s: release %s of plan %s withheld: %s", self.site, release_id, approval.plan_id[:16], e)
            raise self._denied(f"release {release_id} withheld: {e}") from None
        stddev = None
        if request.role == "train":
            result, stddev = self._noise.apply(approval, terms, request, result, digest)
        elif request.role == "eval":
            result, stddev = self._noise.evaluation(approval, result, digest)
        round_num, repeat = self._record(approval, request, names, identity, digest)
        audit = {"plan": approval.plan_id, "role": request.role, "round": round_num, "id": release_id,
                 "datasets": names, "clients": len(refs)}
        if norm is not None:
            audit["norm"] = round(norm, 6)
        if stddev is not None:
            audit["noise_stddev"] = stddev
        if repeat:
            audit["repeat"] = True
        response = release_pb2.ReleaseResponse(result=result, round=round_num, repeat=repeat, release_id=release_id)
        return response.SerializeToString(), {"release": audit}

    def size_limit(self) -> int:
        """The largest release request any approved plan allows: its free state's bytes, plus room for
        the tensors' headers and the selection."""
        largest = 0
        for approval in self.store.all():
            for role in approval.terms:
                try:
                    terms = self.store.terms(approval, role)
                except TffprodError:
                    continue
                largest = max(largest, terms.state_bytes + 256 * len(terms.free))
        return largest + _REQUEST_SLACK + 8 * self._refs.total_clients

    # -- checks --------------------------------------------------------------------------------

    def _approval(self, plan_id: str, identity: Optional[str], federation: Optional[str]) -> Approval:
        approval = self.store.get(plan_id) if plan_id else None
        if approval is None:
            raise self._denied(f"plan '{plan_id[:64]}' is not approved here "
                               "(the site operator approves plans with 'tffprod site approve')")
        if not approval.allows(identity, federation):
            raise self._denied(f"plan {plan_id[:16]} is approved for another coordinator or federation, not "
                               f"'{identity}' in federation '{federation or '-'}'")
        return approval

    def _terms(self, approval: Approval, role: str) -> Any:
        try:
            terms = self.store.terms(approval, role) if role in ("train", "eval", "compute") else None
        except TffprodError as e:
            raise _refused(grpc.StatusCode.FAILED_PRECONDITION, self.site, str(e)) from None
        if terms is None:
            raise self._invalid(f"plan {approval.plan_id[:16]} has no '{role[:20]}' computation")
        return terms

    def _check_round(self, approval: Approval, request: release_pb2.ReleaseRequest) -> None:
        if request.role == "train" and not 1 <= request.round <= approval.rounds:
            raise self._invalid(f"round {request.round} is not a round of plan {approval.plan_id[:16]} "
                                f"(1..{approval.rounds})")
        if request.role != "train" and request.round != 0:
            raise self._invalid(f"a release for '{request.role}' has round 0")

    def _selection(self, approval: Approval, request: release_pb2.ReleaseRequest) -> tuple[list[bytes], list[str]]:
        """The local paths the release reads, and the dataset names, from the request's selection."""
        allowed = approval.roles.get(request.role, ())
        if not request.datasets:
            raise self._invalid("a release reads at least one dataset of its plan")
        if request.role == "eval" and (len(request.datasets) != 1 or request.datasets[0].clients):
            raise self._invalid("an evaluation release reads exactly one evaluation dataset, whole")
        refs: list[bytes] = []
        names: list[str] = []
        for selection in request.datasets:
            name = selection.name
            if name not in allowed:
                raise self._denied(f"dataset '{name[:64]}' is not a {request.role} dataset of plan "
                                   f"{approval.plan_id[:16]} at this site")
            if name in names:
                raise self._invalid(f"dataset '{name}' is selected twice")
            self._refs.check_unchanged(name)
            names.append(name)
            clients = list(selection.clients)
            if name in approval.per_client and request.role == "train":
                if not clients:
                    raise self._denied(f"dataset '{name}' is approved only client by client, not as a whole")
                if len(set(clients)) != len(clients):
                    raise self._invalid(f"dataset '{name}': a client is selected twice")
                refs.extend(self._refs.local_path(name, index) for index in clients)
            elif clients:
                raise self._invalid(f"dataset '{name}' is read whole in this plan; select no clients")
            else:
                refs.append(self._refs.local_path(name))
        return refs, names

    # -- secure aggregation --------------------------------------------------------------------

    def secagg(self, step: str, raw: bytes, identity: Optional[str], federation: Optional[str]
               ) -> tuple[bytes, dict[str, Any]]:
        """One step of a round's secure aggregation: ``advertise``, ``share`` or ``unmask``
        (:mod:`tffprod.executors.secagg_site`); the serialized answer and the audit fields.

        Raises:
            RequestRefused: the plan or round is not approved for the caller, the participants are not
                the plan's sites, or the step is out of order (one line).
        """
        message: Any = {"advertise": release_pb2.SecAggRound, "share": release_pb2.SecAggShareRequest,
                        "unmask": release_pb2.SecAggUnmaskRequest}[step]
        try:
            request = message.FromString(raw)
        except Exception:
            raise self._invalid(f"the secure aggregation {step} request does not parse") from None
        round_msg = request if step == "advertise" else request.round
        approval, settings = self._round_settings(round_msg, identity, federation)
        plan_id, round_num = approval.plan_id, round_msg.round
        if step == "advertise":
            answer: Any = self._noise.secagg.advertise(plan_id, round_num, settings)
        elif step == "share":
            answer = self._noise.secagg.share(plan_id, round_num, settings, list(request.advertisements))
        else:
            answer = self._noise.secagg.unmask(plan_id, round_num, settings, request)
        audit = {"plan": plan_id, "round": round_num, "step": step, "sites": list(settings.participants)}
        return answer.SerializeToString(), {"secagg": audit}

    def _round_settings(self, round_msg: Any, identity: Optional[str], federation: Optional[str]) -> tuple[Any, Any]:
        approval = self._approval(round_msg.plan_id, identity, federation)
        if "secure_aggregation" not in approval.privacy:
            raise _refused(grpc.StatusCode.FAILED_PRECONDITION, self.site,
                           f"plan {approval.plan_id[:16]} has no secure aggregation")
        if not 1 <= round_msg.round <= approval.rounds:
            raise self._invalid(f"round {round_msg.round} is not a round of plan {approval.plan_id[:16]} "
                                f"(1..{approval.rounds})")
        return approval, self._noise.round_settings(approval, self._terms(approval, "train"), round_msg.participants)

    def _check_secure_release(self, approval: Approval, request: release_pb2.ReleaseRequest, digest: str) -> None:
        """A training release under secure aggregation belongs to this round's masks and is given once."""
        secagg = request.secagg
        if not request.HasField("secagg") or secagg.round.plan_id != request.plan_id \
                or secagg.round.round != request.round:
            raise self._invalid(f"plan {approval.plan_id[:16]}'s training releases go through secure aggregation: "
                                "the request needs this round's secure aggregation input")
        if self.ledger.repeat_of(approval.plan_id, digest) is not None:
            raise self._denied(f"this release of plan {approval.plan_id[:16]} was given once under secure "
                               "aggregation and is not given again")
        self._noise.secagg.check_agreed(approval.plan_id, request.round, tuple(secagg.round.participants))

    # -- the worker ----------------------------------------------------------------------------

    def _run(self, terms: Any, state: list, refs: list[bytes], release_id: str,
             context: grpc.ServicerContext) -> list[release_pb2.Tensor]:
        """Run the approved computation on ``state`` and ``refs`` on the site's own executor for it."""
        try:
            clients = 1 if terms.signature.one_client else len(refs)  # one client may hold every reference
            value = self._executors.run(terms.sha256, terms.computation, terms.signature.argument(state, refs),
                                        clients, context)
            return terms.signature.read_result(value)
        except WorkerStageError as error:
            if error.code in _TRANSIENT:  # the caller may try again; keep the code
                raise _refused(error.code, self.site, f"release {release_id}: the worker did not answer at "
                                                      f"{error.stage} ({error.code.name})") from None
            log.error("site %s: release %s failed in the worker at %s (%s)", self.site, release_id, error.stage,
                      error.code.name)
            raise _refused(grpc.StatusCode.INTERNAL, self.site,
                           f"release {release_id} failed in the worker at {error.stage} ({error.code.name}); "
                           "the site's log has this id") from None
        except SignatureError as e:
            log.error("site %s: release %s: the worker's result does not match the plan: %s", self.site,
                      release_id, e)
            raise _refused(grpc.StatusCode.INTERNAL, self.site,
                           f"release {release_id}: the worker's result does not match the plan") from None

    def _record(self, approval: Approval, request: release_pb2.ReleaseRequest, names: list[str],
                identity: Optional[str], digest: str) -> tuple[int, bool]:
        if request.role == "train":
            recorded = self.ledger.record_call(approval, identity, digest)
            return recorded.round, recorded.repeat
        repeats = [self.ledger.record_eval(approval, name, identity, digest) for name in names]
        return 0, all(repeats)
