"""gRPC errors from sites, as tffprod errors: the one place on the coordinator side that reads a gRPC status.

    grpc.RpcError / TFF's RetryableError from a site's service
    ├── UNAVAILABLE, where the caller retries    -> SiteUnavailableError  (the round router tries again;
    │                                               TFF's executor stub: also FAILED_PRECONDITION)
    └── any other status, or no retry            -> the caller's error, e.g. ReleaseRefusedError (a release),
                                                    SessionError (a session's opening check), SiteCheckError
                                                    ('site check'), with the site's one line ``CODE: details``

The site's own words travel as ``CODE: details`` (:func:`status_line`), never more than one line.
TF-free; ``grpc`` is imported only to read status codes.
"""

from __future__ import annotations

from typing import Any

from tffprod.errors import ReleaseRefusedError, SiteUnavailableError, TffprodError

__all__ = ["site_error", "status_line"]

MAX_LINE = 500  # characters of a site's message that reach a log, a report or the registry


def status_line(error: BaseException) -> str:
    """One line for an error from a site: a gRPC status as ``CODE: details``, a release the site refused
    as its reason, anything else as ``Type: message``."""
    if isinstance(error, ReleaseRefusedError):
        text = str(error)
    elif callable(getattr(error, "code", None)) and callable(getattr(error, "details", None)):
        try:
            text = f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]
        except Exception:  # not a real grpc.Call after all
            text = f"{type(error).__name__}: {error}"
    else:
        text = f"{type(error).__name__}: {error}"
    lines = text.strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:MAX_LINE]


def _unavailable(error: Any) -> bool:
    import grpc

    code = getattr(error, "code", None)
    return callable(code) and code() is grpc.StatusCode.UNAVAILABLE


def site_error(error: BaseException, *, what: str, refused: type[TffprodError] = ReleaseRefusedError,
               prefix: str = "", retryable: bool = True) -> TffprodError:
    """The tffprod error for ``error``, raised by a call to a site's service.

    Args:
        error: the ``grpc.RpcError`` (or the ``grpc.Call`` behind TFF's ``RetryableError``).
        what: the service, for an unavailable one: ``"site"``, ``"executor service"``.
        refused: the error for any other status.
        prefix: put before the site's ``CODE: details`` in ``refused``'s message.
        retryable: whether UNAVAILABLE becomes :class:`SiteUnavailableError` (the caller retries);
            otherwise it is refused like any other status.
    """
    if retryable and _unavailable(error):
        return SiteUnavailableError(f"{what} unavailable ({status_line(error)})")
    return refused(f"{prefix}{status_line(error)}")
