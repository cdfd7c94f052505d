"""The site-info service ``tffprod.v1.SiteInfo/Get``: what a site tells coordinators.

It runs on the gateway's port behind the same mTLS and token check as the
executor service. The request body is ignored; the response is UTF-8 JSON::

    {"site": "hospital-a",
     "versions": {"tffprod": "0.1.0", "tensorflow_federated": "0.87.0", "tensorflow": "2.14.1"},
     "catalog": [{"name", "format", "schema", "num_examples", "content_hash", "budget",
                  "client_id", "num_clients"}, ...],   # never paths, never client ids
     "health": {"worker": "up" | "down", "uptime_s": 12.3}}                           # gateway uptime

Versions come from installed package metadata (nothing is imported). TF-free.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Iterable, Optional

__all__ = ["SITE_INFO_METHOD", "SITE_INFO_SERVICE", "fetch_site_info", "installed_versions", "site_info"]

SITE_INFO_SERVICE = "tffprod.v1.SiteInfo"
SITE_INFO_METHOD = f"/{SITE_INFO_SERVICE}/Get"
IDENTITY_HEADER = "x-tffprod-identity"  # plaintext dev mode only: who the caller says it is
FEDERATION_HEADER = "x-tffprod-federation"  # the federation a coordinator calls for

_DISTRIBUTIONS = (("tffprod", "tffprod"), ("tensorflow_federated", "tensorflow-federated"),
                  ("tensorflow", "tensorflow"))


def installed_versions() -> dict[str, Optional[str]]:
    """Versions of tffprod, TFF and TF from package metadata (``None`` when not installed)."""
    out: dict[str, Optional[str]] = {}
    for key, dist in _DISTRIBUTIONS:
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    return out


def site_info(site: str, catalog: Iterable[Any], *, worker_up: bool, uptime_s: float) -> dict[str, Any]:
    """The site-info document.

    Args:
        site: the site's name.
        catalog: ``CatalogEntry`` objects; only their ``public()`` fields are used.
        worker_up: whether the executor worker is running.
        uptime_s: seconds since the gateway started.
    """
    return {
        "site": site,
        "versions": installed_versions(),
        "catalog": sorted((entry.public() for entry in catalog), key=lambda e: e["name"]),
        "health": {"worker": "up" if worker_up else "down", "uptime_s": round(uptime_s, 3)},
    }


def fetch_site_info(channel: Any, token: str, identity: Optional[str] = None, *,
                    timeout_s: float = 10.0) -> dict[str, Any]:
    """Ask a site's gateway for its site-info document.

    Args:
        channel: a ``grpc.Channel`` to the gateway (mTLS in production).
        token: this coordinator's bearer token for the site.
        identity: the identity to claim; only for a gateway in plaintext dev mode
            (with TLS the certificate's common name is the identity).
        timeout_s: deadline of the call.

    Returns:
        The decoded JSON document (see the module docstring).

    Raises:
        grpc.RpcError: the site refused or could not be reached (callers translate it).
        ValueError: the answer is not JSON (a ``RecursionError`` if absurdly nested);
            ``tffprod.sites.admin.check_info`` checks the document's shape.
    """
    metadata = [("authorization", f"Bearer {token}")]
    if identity is not None:
        metadata.append((IDENTITY_HEADER, identity))
    call = channel.unary_unary(SITE_INFO_METHOD)
    return json.loads(call(b"", metadata=metadata, timeout=timeout_s))
