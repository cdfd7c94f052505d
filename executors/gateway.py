"""The site gateway: the only door into a site's executor worker.

TFF's ``worker_binary`` listens in plaintext, authenticates nobody and runs
any graph it is sent (shared/design/tff-0.87-facts.md section 6), so it stays
on loopback. The gateway sits on the site's public address and, for every call:

1. authenticates the caller: mTLS with a client certificate signed by the
   site's CA (the certificate's common name is the identity) plus a bearer
   token (``authorization: Bearer T``) whose SHA-256 must equal the hash
   configured for that identity; failures are ``UNAUTHENTICATED``;
2. under approval (``approvals``, the default policy) serves only the typed
   release protocol (``tffprod.site.v1.Release``, :mod:`tffprod.executors.release`):
   the site builds every call to its worker itself, from approved plans; TFF's
   executor protocol is not served at all;
3. under the development policy ``computations = "any"`` instead forwards the 8
   unary-unary ``tensorflow_federated.v0.ExecutorGroup`` RPCs to the worker as raw
   bytes, swapping catalog names for local paths in ``CreateValue``
   (``tffprod.executors.datarefs``) and passing the worker's errors through (catalog
   paths redacted);
4. answers ``UNAVAILABLE`` itself when the worker is down;
5. appends one audit line per call, refused calls included (``audit``).

It also serves ``tffprod.v1.SiteInfo/Get`` (``siteinfo``) behind the same
checks. Plaintext is allowed only with ``insecure_dev=True`` on a loopback
address; the caller then names itself in the ``x-tffprod-identity`` header and
the token is still checked.

Nothing here imports TensorFlow or ``tensorflow_federated``'s Python package:
a site starts in well under a second.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from typing import Any, Callable, Collection, Mapping, Optional, TypeVar

import grpc

from tffprod.errors import GatewayError
from tffprod.executors.addresses import is_loopback
from tffprod.executors.audit import AuditLog
from tffprod.executors.datarefs import CatalogEntry, DataRefs, RequestRefused
from tffprod.executors.approvals import ApprovalStore
from tffprod.executors.ledger import SiteLedger
from tffprod.protocol.protos import executor_pb2
from tffprod.executors.release import (MAX_PIECE_BYTES, RELEASE_METHOD, RELEASE_SERVICE, RELEASE_STREAM_METHOD,
                                       ReleaseHandler)
from tffprod.protocol.siteinfo import FEDERATION_HEADER, IDENTITY_HEADER, SITE_INFO_SERVICE, site_info

__all__ = ["EXECUTOR_METHODS", "EXECUTOR_SERVICE", "CatalogEntry", "Gateway", "GatewayError", "is_loopback"]

log = logging.getLogger(__name__)

EXECUTOR_SERVICE = "tensorflow_federated.v0.ExecutorGroup"
EXECUTOR_METHODS = ("GetExecutor", "CreateValue", "CreateCall", "CreateStruct", "CreateSelection",
                    "Compute", "Dispose", "DisposeExecutor")
# One message can be a whole model or a client's data: gRPC's Python limit (2 GB) on both hops.
MAX_MESSAGE_BYTES = 2**31 - 1
MESSAGE_LIMITS = (("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                  ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES))
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_NO_DEADLINE_S = 1e8  # what a call without a deadline reports as its time remaining is far beyond this



SECAGG_STEPS = ("advertise", "share", "unmask")  # Release/SecAgg{Advertise,Share,Unmask}


def claimed_federation(context: grpc.ServicerContext) -> Optional[str]:
    """The federation a call names in ``x-tffprod-federation`` (None: none, or more than one)."""
    values = {v for k, v in context.invocation_metadata() if k == FEDERATION_HEADER}
    return values.pop() if len(values) == 1 else None


class _CountingStream:
    """A request stream's pieces, counting the bytes read (for the audit log)."""

    def __init__(self, pieces: Any) -> None:
        self._pieces = pieces
        self.count = 0

    def __iter__(self) -> Any:
        for piece in self._pieces:
            self.count += len(piece)
            yield piece


# A handler gets the request (its bytes, or a _CountingStream of them) and returns the response, or the
# response and extra audit fields.
_Request = TypeVar("_Request", bytes, _CountingStream)
Handler = Callable[[_Request, grpc.ServicerContext], Any]


def _listen_host(listen: str) -> str:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host


class Gateway:
    """A gRPC server forwarding authenticated executor calls to one local worker.

    Args:
        site: the site's name (in messages and site info).
        listen: ``HOST:PORT`` to bind; port 0 picks a free one (see ``start``).
        worker_address: ``HOST:PORT`` of the site's ``worker_binary`` (loopback).
        catalog: catalog name -> ``CatalogEntry``; the only data a coordinator can name.
        tokens: coordinator identity -> SHA-256 hex digest of its bearer token.
        tls: ``(key_pem, cert_pem, ca_pem)``: the server's key and certificate and the CA
            that signs coordinator certificates. ``None`` only together with ``insecure_dev``.
        audit: where every call is recorded.
        insecure_dev: serve plaintext (loopback only), identity from ``x-tffprod-identity``.
        worker_health: returns whether the worker is running.
        max_workers: threads serving calls (each blocks while its worker call runs).
        approvals: the site's approved plans: serve only releases of them (with ``ledger``);
            None forwards TFF's executor protocol, running any computation (the explicit
            development policy ``computations = "any"``).
        ledger: the site's privacy ledger (required with ``approvals``).
        federations: the federations this site serves; executor calls must then name one of
            them in ``x-tffprod-federation``. None: any (a named federation is still recorded).
        max_message_bytes: the largest message accepted from a caller (a larger one is
            ``RESOURCE_EXHAUSTED`` before any handler runs); a site passes its worker's limit,
            so nothing the worker would refuse is read into memory here.

    Raises:
        ValueError: plaintext without ``insecure_dev`` or off loopback, TLS and
            ``insecure_dev`` together, a token entry that is not a SHA-256 hex digest,
            a malformed catalog, or ``max_message_bytes`` outside 1..2**31-1.
    """

    def __init__(self, *, site: str, listen: str, worker_address: str, catalog: Mapping[str, CatalogEntry],
                 tokens: Mapping[str, str], tls: Optional[tuple[bytes, bytes, bytes]], audit: AuditLog,
                 insecure_dev: bool = False, worker_health: Callable[[], bool] = lambda: True,
                 max_workers: int = 16, approvals: Optional[ApprovalStore] = None,
                 ledger: Optional[SiteLedger] = None,
                 federations: Optional[Collection[str]] = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        host = _listen_host(listen)
        if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) \
                or not 1 <= max_message_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be an integer 1..{MAX_MESSAGE_BYTES}, got {max_message_bytes!r}")
        if insecure_dev:
            if tls is not None:
                raise ValueError("give either tls or insecure_dev=True, not both")
            if not is_loopback(host):
                raise ValueError(f"site {site}: plaintext (insecure_dev) is only allowed on loopback, "
                                 f"not on {host!r}")
        elif tls is None:
            raise ValueError(f"site {site}: TLS key, certificate and CA are required "
                             "(plaintext only with insecure_dev=True on loopback)")
        for identity, digest in tokens.items():
            if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest.lower()):
                raise ValueError(f"token for {identity!r} must be the SHA-256 hex digest of the token, "
                                 "not the token itself")
        self.site = site
        self.listen = listen
        self.worker_address = worker_address
        self._catalog = dict(catalog)
        self._refs = DataRefs(site, self._catalog)
        self._tokens = {identity: digest.lower() for identity, digest in tokens.items()}
        self._tls = tls
        self._audit = audit
        self._worker_health = worker_health
        self._releases: Optional[ReleaseHandler] = None
        if approvals is not None:
            if ledger is None:
                raise ValueError("a gateway under approval needs the site's privacy ledger")
            self._releases = ReleaseHandler(site, approvals, ledger, self._refs, self._worker_message_call,
                                            credentials=tls)
        self._federations = None if federations is None else frozenset(federations)
        self._max_workers = max_workers
        # Under approval no message is larger than a streamed piece of a release: gRPC refuses a longer
        # one before reading it.
        receive = max_message_bytes if approvals is None else min(max_message_bytes, MAX_PIECE_BYTES)
        # gRPC shares a port between servers by default (SO_REUSEPORT): a second site on this port would start
        # and take part of the coordinators' connections. With it off, the second one cannot bind.
        self._server_options = (("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                ("grpc.max_receive_message_length", receive), ("grpc.so_reuseport", 0))
        self._server: Optional[grpc.Server] = None
        self._channel: Optional[grpc.Channel] = None
        self._started_at = 0.0
        self._lock = threading.Lock()
        self.port: Optional[int] = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> int:
        """Bind, start serving, and return the bound port.

        Raises:
            GatewayError: the address cannot be bound.
        """
        with self._lock:
            if self._server is not None:
                return self.port  # type: ignore[return-value]
            channel = grpc.insecure_channel(self.worker_address, options=MESSAGE_LIMITS)
            server = grpc.server(
                concurrent.futures.ThreadPoolExecutor(self._max_workers, thread_name_prefix=f"gateway-{self.site}"),
                options=self._server_options,
            )
            handlers = [grpc.method_handlers_generic_handler(SITE_INFO_SERVICE, {"Get": self._site_info_method()})]
            if self._releases is None:
                executor_handlers = {m: self._executor_method(channel, m) for m in EXECUTOR_METHODS}
                handlers.append(grpc.method_handlers_generic_handler(EXECUTOR_SERVICE, executor_handlers))
            else:
                handlers.append(grpc.method_handlers_generic_handler(RELEASE_SERVICE, {
                    "Release": self._release_method(), "ReleaseStream": self._release_stream_method(),
                    **{f"SecAgg{step.title()}": self._secagg_method(step) for step in SECAGG_STEPS}}))
            server.add_generic_rpc_handlers(handlers)
            try:
                if self._tls is None:
                    port = server.add_insecure_port(self.listen)
                else:
                    key, cert, ca = self._tls
                    creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                        require_client_auth=True)
                    port = server.add_secure_port(self.listen, creds)
            except RuntimeError as e:
                port, reason = 0, str(e)
            else:
                reason = "bind failed"
            if not port:
                channel.close()
                raise GatewayError(f"site {self.site}: cannot listen on {self.listen} ({reason})")
            server.start()
            self._server, self._channel, self.port = server, channel, port
            self._started_at = time.monotonic()
            log.info("site %s: gateway on port %d -> worker %s", self.site, port, self.worker_address)
            return port

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting calls, let running ones finish for ``grace`` seconds, close the worker channel."""
        with self._lock:
            server, channel = self._server, self._channel
            self._server = self._channel = None
        if server is not None:
            server.stop(grace).wait()
        if channel is not None:
            channel.close()

    def __enter__(self) -> "Gateway":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- handlers ------------------------------------------------------------------------------

    def _executor_method(self, channel: grpc.Channel, method: str) -> grpc.RpcMethodHandler:
        """Forward one executor RPC (the development policy ``computations = "any"`` only)."""
        full = f"/{EXECUTOR_SERVICE}/{method}"
        upstream = channel.unary_unary(full)  # no serializers: bytes in, bytes out
        request_type = getattr(executor_pb2, f"{method}Request")

        def forward(request: bytes, context: grpc.ServicerContext) -> Any:
            if not self._worker_health():
                raise RequestRefused(grpc.StatusCode.UNAVAILABLE, self._worker_down())
            call = lambda req: self._call_worker(upstream, req, context)  # noqa: E731
            if method == "CreateValue":
                return call(self._refs.names_to_paths(request))
            self._check_parses(request_type, method, request)  # small messages: microseconds
            response = call(request)
            return self._refs.paths_to_names(response) if method == "Compute" else response

        return grpc.unary_unary_rpc_method_handler(lambda req, ctx: self._serve(full, req, ctx, forward))

    def _release_method(self) -> grpc.RpcMethodHandler:
        """``tffprod.site.v1.Release/Release`` (under approval)."""
        releases = self._releases
        assert releases is not None

        def release(request: bytes, context: grpc.ServicerContext) -> Any:
            if not self._worker_health():
                raise RequestRefused(grpc.StatusCode.UNAVAILABLE, self._worker_down())
            return releases.release(request, self._claimed_identity(context), claimed_federation(context), context)

        return grpc.unary_unary_rpc_method_handler(lambda req, ctx: self._serve(RELEASE_METHOD, req, ctx, release))

    def _release_stream_method(self) -> grpc.RpcMethodHandler:
        """``tffprod.site.v1.Release/ReleaseStream`` (under approval): a release in pieces."""
        releases = self._releases
        assert releases is not None

        def release(stream: "_CountingStream", context: grpc.ServicerContext) -> Any:
            if not self._worker_health():
                raise RequestRefused(grpc.StatusCode.UNAVAILABLE, self._worker_down())
            return releases.release_stream(iter(stream), self._claimed_identity(context),
                                           claimed_federation(context), context)

        return grpc.stream_unary_rpc_method_handler(
            lambda pieces, ctx: self._serve(RELEASE_STREAM_METHOD, _CountingStream(pieces), ctx, release))

    def _secagg_method(self, step: str) -> grpc.RpcMethodHandler:
        """``tffprod.site.v1.Release/SecAgg{Advertise,Share,Unmask}``: a step of secure aggregation."""
        releases = self._releases
        assert releases is not None
        method = f"/{RELEASE_SERVICE}/SecAgg{step.title()}"

        def secagg(request: bytes, context: grpc.ServicerContext) -> Any:
            return releases.secagg(step, request, self._claimed_identity(context), claimed_federation(context))

        return grpc.unary_unary_rpc_method_handler(lambda req, ctx: self._serve(method, req, ctx, secagg))

    def _site_info_method(self) -> grpc.RpcMethodHandler:
        def info(request: bytes, context: grpc.ServicerContext) -> bytes:
            uptime = time.monotonic() - self._started_at
            document = site_info(self.site, self._catalog.values(), worker_up=bool(self._worker_health()),
                                 uptime_s=uptime)
            document["computations"] = "approved" if self._releases is not None else "any"
            document["federations"] = None if self._federations is None else sorted(self._federations)
            return json.dumps(document).encode()

        return grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: self._serve(f"/{SITE_INFO_SERVICE}/Get", req, ctx, info))

    def _serve(self, method: str, request: _Request, context: grpc.ServicerContext,
               handler: Handler[_Request]) -> bytes:
        """Authenticate, run ``handler``, audit, and turn refusals into gRPC statuses (``request``: the
        request's bytes, or a ``_CountingStream`` of them)."""
        started = time.monotonic()
        identity: Optional[str] = None
        response = b""
        extra: dict = {}
        code, detail = grpc.StatusCode.OK, None
        try:
            identity = self._claimed_identity(context)
            self._authenticate(identity, context)
            self._check_federation(method, context)
            response = handler(request, context)
            if isinstance(response, tuple):
                response, extra = response
        except RequestRefused as refused:
            code, detail = refused.code, refused.detail
        except Exception:  # a gateway bug must not take the site down or leak a traceback
            log.exception("site %s: gateway error in %s", self.site, method)
            code, detail = grpc.StatusCode.INTERNAL, f"site {self.site}: gateway error (see the site's log)"
        try:
            if isinstance(request, _CountingStream):
                bytes_in = request.count
            else:
                bytes_in = len(request)
            self._audit.record(identity=identity, method=method, bytes_in=bytes_in,
                               bytes_out=len(response), status=code.name,
                               duration_s=time.monotonic() - started, detail=detail, **extra)
        except Exception:
            log.exception("site %s: cannot write the audit log", self.site)
        if code is not grpc.StatusCode.OK:
            context.abort(code, detail or "")
        return response

    # -- auth ----------------------------------------------------------------------------------

    def _claimed_identity(self, context: grpc.ServicerContext) -> Optional[str]:
        if self._tls is None:
            values = [v for k, v in context.invocation_metadata() if k == IDENTITY_HEADER]
            return values[0] if len(values) == 1 and values[0] else None
        names = context.auth_context().get("x509_common_name") or []
        return names[0].decode("utf-8", errors="replace") if names else None

    def _authenticate(self, identity: Optional[str], context: grpc.ServicerContext) -> None:
        if identity is None:
            how = IDENTITY_HEADER if self._tls is None else "certificate common name"
            raise RequestRefused(grpc.StatusCode.UNAUTHENTICATED, f"no coordinator identity ({how})")
        expected = self._tokens.get(identity)
        if expected is None:
            raise RequestRefused(grpc.StatusCode.UNAUTHENTICATED, f"unknown coordinator identity '{identity}'")
        # A channel with call credentials plus an explicit header sends the token twice: fine if equal.
        presented = set()
        for key, value in context.invocation_metadata():
            if key == "authorization":
                scheme, _, token = value.partition(" ")
                presented.add(token.strip() if scheme.lower() == "bearer" else "\0")
        token = presented.pop() if len(presented) == 1 else ""
        actual = hashlib.sha256(token.encode()).hexdigest()
        if not token or not hmac.compare_digest(actual, expected):
            raise RequestRefused(grpc.StatusCode.UNAUTHENTICATED, f"bad token for '{identity}'")

    def _check_federation(self, method: str, context: grpc.ServicerContext) -> None:
        """Refuse a call for a federation this site does not serve (and, if it serves only some,
        an executor call that names none)."""
        if self._federations is None:
            return
        named = claimed_federation(context)
        served = ", ".join(sorted(self._federations))
        if named is None:
            if method.startswith((f"/{EXECUTOR_SERVICE}/", RELEASE_METHOD)):
                raise RequestRefused(grpc.StatusCode.PERMISSION_DENIED,
                                     f"site {self.site} serves only federation(s) {served}; the call names none")
        elif named not in self._federations:
            raise RequestRefused(grpc.StatusCode.PERMISSION_DENIED,
                                 f"site {self.site} does not serve federation '{named}' (it serves: {served})")

    # -- the worker ----------------------------------------------------------------------------

    def _check_parses(self, request_type: Any, method: str, request: bytes) -> None:
        """Refuse bytes the worker would only answer with an empty INTERNAL error."""
        try:
            request_type.FromString(request)
        except Exception:
            raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"site {self.site}: {method} request does not parse") from None

    def _worker_down(self) -> str:
        return f"site {self.site}: executor worker is not running"

    def _worker_message_call(self, method: str, request: Any, response_type: Any,
                             context: grpc.ServicerContext) -> Any:
        """One executor RPC to the worker with messages (the release service builds them)."""
        channel = self._channel
        if channel is None:
            raise RequestRefused(grpc.StatusCode.UNAVAILABLE, f"site {self.site}: the gateway is stopping")
        upstream = channel.unary_unary(f"/{EXECUTOR_SERVICE}/{method}",
                                       request_serializer=type(request).SerializeToString,
                                       response_deserializer=response_type.FromString)
        return self._call_worker(upstream, request, context)

    def _call_worker(self, upstream: grpc.UnaryUnaryMultiCallable, request: bytes,
                     context: grpc.ServicerContext) -> bytes:
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None and remaining < _NO_DEADLINE_S else None
        future = upstream.future(request, timeout=timeout)
        context.add_callback(future.cancel)  # the caller went away: stop the worker's call too
        try:
            return future.result()
        except grpc.FutureCancelledError:
            raise RequestRefused(grpc.StatusCode.CANCELLED, "cancelled by the caller") from None
        except grpc.RpcError as e:
            code = e.code()
            if code is grpc.StatusCode.UNAVAILABLE:
                if not self._worker_health():
                    raise RequestRefused(code, self._worker_down()) from None
                raise RequestRefused(code, f"site {self.site}: executor worker unavailable: "
                                           f"{self._refs.redact(e.details() or '')}") from None
            detail = self._refs.redact(e.details() or "")
            raise RequestRefused(code, detail or f"site {self.site}: executor worker said {code.name} "
                                                 "without a message") from None
