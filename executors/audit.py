"""The site gateway's audit log: one JSON line per RPC, refused calls included.

Each line is a JSON object::

    {"time": "2025-01-01T12:00:00.123456+00:00",   # ISO 8601, UTC, when the call ended
     "identity": "coordinator",                    # TLS common name (or "?" when none was presented)
     "method": "/tensorflow_federated.v0.ExecutorGroup/CreateValue",
     "bytes_in": 1234, "bytes_out": 56,            # request / response sizes as they crossed the gateway
     "status": "OK",                               # gRPC status code name
     "duration_s": 0.0123,
     "detail": null}                               # the error message sent back, or null

Under computation approval a ``Compute`` that releases a result also carries
``"release": {"plan": ID, "role": "train"|"eval", "computation": SHA256,
"round": N}`` (``round`` is null for evaluation releases). Approvals are
recorded as lines with ``"method": "approve"``.

Lines are written whole under a lock and flushed at once, so concurrent RPCs
never interleave and a crash loses at most the call in flight. Tokens and
dataset paths are never written.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

__all__ = ["AUDIT_FILE", "UNKNOWN_IDENTITY", "AuditLog", "read_audit_log"]

UNKNOWN_IDENTITY = "?"
AUDIT_FILE = "audit.jsonl"  # in the site's STATE_DIR


class AuditLog:
    """An append-only JSON-lines file shared by every gateway thread.

    Args:
        path: the log file; created (with its parent directory) if missing, appended to otherwise.
    """

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")

    def record(
        self,
        *,
        identity: Optional[str],
        method: str,
        bytes_in: int,
        bytes_out: int,
        status: str,
        duration_s: float,
        detail: Optional[str] = None,
        **extra: Any,
    ) -> None:
        """Append one call's line and flush it; ``extra`` fields (e.g. ``release``) are added as given."""
        line = json.dumps({
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "identity": identity or UNKNOWN_IDENTITY,
            "method": method,
            "bytes_in": int(bytes_in),
            "bytes_out": int(bytes_out),
            "status": status,
            "duration_s": round(float(duration_s), 6),
            "detail": detail,
            **extra,
        }, ensure_ascii=False)
        with self._lock:
            if self._file.closed:
                raise ValueError(f"audit log {self.path} is closed")
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_audit_log(path: os.PathLike | str) -> Iterator[dict[str, Any]]:
    """The records of an audit log, oldest first (a torn last line is skipped)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
