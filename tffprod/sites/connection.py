"""How the coordinator reaches a site: address, TLS files and bearer token.

Secrets stay in files; the registry keeps only their paths. TF-free.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional

from tffprod.errors import NotFoundError, SpecError
from tffprod.protocol.siteinfo import FEDERATION_HEADER

# Large models travel as single messages; gRPC's Python side caps at 2 GB.
GRPC_OPTIONS = (
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # Reconnect soon after a site comes back: gRPC's default backoff (1 s, x1.6, up to 120 s) fails
    # calls at once while it waits, so a restarted site would miss rounds it could have served.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


@dataclasses.dataclass(frozen=True)
class SiteConnection:
    """The coordinator's side of one site's mTLS link."""

    site: str
    address: str
    ca: Path
    cert: Path
    key: Path
    token_file: Path

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise SpecError(f"site {self.site}: address {self.address!r} is not HOST:PORT")

    def to_info(self) -> dict[str, str]:
        """What the registry stores (paths only, never the secrets)."""
        return {k: str(Path(getattr(self, k)).resolve()) for k in ("ca", "cert", "key", "token_file")}

    @classmethod
    def from_registry(cls, row: Mapping[str, Any]) -> "SiteConnection":
        info = row.get("info") or {}
        missing = [k for k in ("ca", "cert", "key", "token_file") if not info.get(k)]
        if not row.get("address") or missing:
            raise NotFoundError(
                f"site {row['name']} has no connection settings ({', '.join(missing) or 'address'}); "
                "add it with 'tffprod site add'"
            )
        return cls(row["name"], row["address"], *(Path(info[k]) for k in ("ca", "cert", "key", "token_file")))

    def _read(self, path: Path, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise SpecError(f"site {self.site}: cannot read {what} {path}: {e.strerror}") from None

    def token(self) -> str:
        try:
            token = self._read(self.token_file, "token file").decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SpecError(f"site {self.site}: token file {self.token_file} is not UTF-8 text") from None
        if not token:
            raise SpecError(f"site {self.site}: token file {self.token_file} is empty")
        return token

    def channel(self, *, federation: Optional[str] = None) -> Any:
        """A secure gRPC channel: mTLS with this coordinator's certificate; every call carries the
        bearer token and, for a session of a federation, ``x-tffprod-federation``.

        The headers are added by a client interceptor, not call credentials (those run a Python
        thread per call).
        """
        import grpc

        tls = grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca, "CA certificate"),
            private_key=self._read(self.key, "key"),
            certificate_chain=self._read(self.cert, "certificate"),
        )
        headers = [("authorization", f"Bearer {self.token()}")]
        if federation is not None:
            headers.append((FEDERATION_HEADER, federation))
        channel = grpc.secure_channel(self.address, tls, options=GRPC_OPTIONS)
        return grpc.intercept_channel(channel, _headers_interceptor(headers))


def _headers_interceptor(headers: list[tuple[str, str]]) -> Any:
    """A client interceptor that adds ``headers`` to every unary call's and request stream's metadata."""
    import grpc

    class Details(collections.namedtuple("Details", ("method", "timeout", "metadata", "credentials",
                                                     "wait_for_ready", "compression")),
                  grpc.ClientCallDetails):
        pass

    def with_headers(details):
        return Details(details.method, details.timeout, list(details.metadata or []) + headers,
                       details.credentials, details.wait_for_ready, details.compression)

    class AddHeaders(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            return continuation(with_headers(details), request)

        def intercept_stream_unary(self, continuation, details, request_iterator):
            return continuation(with_headers(details), request_iterator)

    return AddHeaders()
