"""Coordinator-side site management: add a site, check it, import its catalog.

TF-free: talks to the site's gateway with gRPC and its site-info service.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from tffprod.sites.connection import SiteConnection
from tffprod.sites.rpc_errors import site_error
from tffprod.config.names import NAME
from tffprod.errors import SiteCheckError, SiteUnreachableError, TffprodError
from tffprod.registry.privacy import check_budget

if TYPE_CHECKING:
    from tffprod.registry.protocol import DatasetRow, RegistryStore, SiteRow

SITE_PATH_PREFIX = "site://"


def add_site(registry: RegistryStore, name: str, *, address: str, ca: Path, cert: Path, key: Path,
             token_file: Path) -> SiteRow:
    """Record a site and where this coordinator's TLS files and token for it live."""
    connection = SiteConnection(name, address, Path(ca), Path(cert), Path(key), Path(token_file))
    for path in (connection.ca, connection.cert, connection.key, connection.token_file):
        if not Path(path).is_file():
            raise TffprodError(f"site {name}: {path} does not exist")
    with registry.atomic():
        row = registry.add_site(name, address=address, info=connection.to_info())
        registry.record_action("site.add", row["name"], {"address": row["address"], "info": row["info"]})
    return row


def version_problems(ours: dict, theirs: dict) -> list[str]:
    """How a site's versions (``theirs``) differ from this coordinator's in ways that break training."""
    problems = []
    for package in ("tensorflow_federated", "tensorflow"):
        if ours.get(package) != theirs.get(package):
            problems.append(f"{package} {theirs.get(package)} at the site, {ours.get(package)} here")
    mine, site = (str(v.get("tffprod", "")).split(".")[:2] for v in (ours, theirs))
    if mine != site:
        problems.append(f"tffprod {theirs.get('tffprod')} at the site, {ours.get('tffprod')} here")
    return problems


def local_versions() -> dict[str, str | None]:
    """Installed versions of tffprod, TFF and TF (read from metadata; None if not installed; nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for key, dist in (("tffprod", "tffprod"), ("tensorflow_federated", "tensorflow-federated"),
                      ("tensorflow", "tensorflow")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    return out


def fetch_info(registry: RegistryStore, name: str, *, timeout_s: float = 10.0) -> dict:
    """The site's own description (name, versions, catalog, health), over mTLS with the token.

    Raises:
        SiteCheckError: unreachable, TLS refused, token refused, or another site answered.
    """
    import grpc

    from tffprod.protocol.siteinfo import fetch_site_info

    connection = SiteConnection.from_registry(registry.get_site(name))
    channel = connection.channel()
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise SiteUnreachableError(f"site {name}: no TLS connection to {connection.address} within {timeout_s:g} s "
                                 "(down, wrong address, or the certificates do not match)") from None
        try:
            info = fetch_site_info(channel, connection.token(), timeout_s=timeout_s)
        except grpc.RpcError as e:
            raise site_error(e, what="site", refused=SiteCheckError, prefix=f"site {name}: ", retryable=False) from None
        except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError), or nested absurdly
            raise SiteCheckError(f"site {name}: the server at {connection.address} answered with site info "
                                 "that is not a JSON document") from None
    finally:
        channel.close()
    check_info(name, info)
    if info.get("site") != name:
        raise SiteCheckError(f"site {name}: the server at {connection.address} says it is {info.get('site')!r}")
    return info


_ENTRY_FIELDS = {"name": str, "format": str, "schema": dict, "num_examples": int, "content_hash": str}


def check_info(site: str, info: Any) -> list[dict]:
    """Check the shape of a site-info document (see ``tffprod.protocol.siteinfo``); return its catalog.

    Only what this module reads is checked: an object whose ``versions`` and ``health`` are
    objects and whose ``catalog`` is a list of entries with a string ``name``, ``format`` and
    ``content_hash``, an object ``schema``, a whole ``num_examples`` >= 0, a string or null
    ``client_id`` and a whole ``num_clients`` >= 1 (or null). Budgets are checked by ``sync_site``.

    Raises:
        SiteCheckError: one line naming the site and the first field that is wrong.
    """
    def wrong(what: str, value: Any) -> SiteCheckError:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return SiteCheckError(f"site {site}: invalid site info: {what}, got {type(value).__name__} {shown}")

    if not isinstance(info, dict):
        raise wrong("expected an object", info)
    for key in ("versions", "health"):
        if not isinstance(info.get(key, {}), dict):
            raise wrong(f"'{key}' must be an object", info[key])
    catalog = info.get("catalog", [])
    if not isinstance(catalog, list):
        raise wrong("'catalog' must be a list", catalog)
    names = set()
    for i, entry in enumerate(catalog):
        if not isinstance(entry, dict):
            raise wrong(f"catalog[{i}] must be an object", entry)
        for key, kind in _ENTRY_FIELDS.items():
            value = entry.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise wrong(f"catalog[{i}].{key} must be a {kind.__name__}", value)
        if not NAME.fullmatch(entry["name"]) or entry["name"] in names:
            raise wrong(f"catalog[{i}].name must be a unique dataset name (letters, digits, '.', '_', '-')",
                        entry["name"])
        names.add(entry["name"])
        if entry["num_examples"] < 0:
            raise wrong(f"catalog[{i}].num_examples must be >= 0", entry["num_examples"])
        if not isinstance(entry.get("client_id"), (str, type(None))):
            raise wrong(f"catalog[{i}].client_id must be a string or null", entry["client_id"])
        clients = entry.get("num_clients")
        if clients is not None and (isinstance(clients, bool) or not isinstance(clients, int) or clients < 1):
            raise wrong(f"catalog[{i}].num_clients must be a whole number >= 1", clients)
    return catalog


def sites_requiring_approval(registry: RegistryStore, sites: Iterable[str]) -> list[str]:
    """Those of ``sites`` that run only plans their operators approved (``computations = "approved"``), asked
    over mTLS; a site that does not answer is left out (the caller's session may go on without it)."""
    strict = []
    for site in dict.fromkeys(sites):
        try:
            if fetch_info(registry, site).get("computations") == "approved":
                strict.append(site)
        except SiteCheckError:
            continue
    return strict


def check_site(registry: RegistryStore, name: str, *, wait_s: float = 0.0) -> dict:
    """Prove the TLS handshake, the token, version compatibility and the catalog.

    Args:
        wait_s: keep trying a site that does not answer at all (still starting) for up to this long.

    Returns:
        ``{"site", "address", "ok", "computations", "warnings", "versions", "problems", "catalog", "health"}``;
        ``computations`` is the site's policy, ``"approved"`` or ``"any"`` (development only, warned about).
    """
    info = _info_waiting(registry, name, wait_s)
    problems = version_problems(local_versions(), info.get("versions", {}))
    if info.get("health", {}).get("worker") != "up":
        problems.append("the site's executor worker is not running")
    computations = info.get("computations", "unknown")
    warnings = []
    if computations != "approved":
        warnings.append(f"site {name} runs ANY computation (computations = \"{computations}\"): a coordinator "
                        "can read any file its worker can read; development only")
    return {
        "site": name,
        "address": registry.get_site(name)["address"],
        "ok": not problems,
        "computations": computations,
        "warnings": warnings,
        "versions": info.get("versions", {}),
        "problems": problems,
        "catalog": [entry["name"] for entry in info.get("catalog", [])],
        "health": info.get("health", {}),
    }


def _info_waiting(registry: RegistryStore, name: str, wait_s: float) -> dict:
    """:func:`fetch_info`, tried again on a fresh channel while the site is unreachable, up to ``wait_s``."""
    import time

    if wait_s <= 0:
        return fetch_info(registry, name)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return fetch_info(registry, name, timeout_s=max(min(2.0, deadline - time.monotonic()), 0.5))
        except SiteUnreachableError:
            if time.monotonic() >= deadline:
                address = registry.get_site(name)["address"]
                raise SiteUnreachableError(f"site {name}: no TLS connection to {address} within {wait_s:g} s "
                                           "(down, wrong address, or the certificates do not match)") from None


def _site_budget(site: str, entry: dict) -> Optional[tuple[float, float]]:
    """The ``(epsilon, delta)`` a catalog entry declares, or None; a malformed one is the site's fault."""
    budget = entry.get("budget")
    if budget is None:
        return None
    try:
        if not isinstance(budget, dict):
            raise ValueError(f"expected an object, got {budget!r}")
        return check_budget(budget.get("epsilon"), budget.get("delta"))
    except (ValueError, OverflowError) as e:  # OverflowError: an integer too large for a float
        raise SiteCheckError(f"site {site}: dataset {entry.get('name')!r} has an invalid budget: {e}") from None


def sync_site(registry: RegistryStore, name: str) -> list[DatasetRow]:
    """Import the site's catalog metadata into the registry's datasets and budgets.

    A dataset whose content and schema are unchanged keeps its version; a changed
    one becomes a new version whose path names the site (``site://SITE/NAME``):
    the coordinator never learns the site's file paths. A dataset with a client-id
    column is mirrored with the column's name and how many clients it holds (never
    their ids).

    A dataset's privacy budget in the site's config is mirrored into the
    registry with ``source="site"`` on every sync, replacing whatever budget
    the registry held for that dataset (a site's budget always wins over a
    coordinator's). A budget the site later removes from its config stays in
    the registry as last mirrored: dropping it would silently lift the limit.

    Raises:
        SiteCheckError: the site cannot be reached, or declares an invalid budget
            (checked before anything is written).
    """
    info = fetch_info(registry, name)
    catalog = check_info(name, info)
    budgets = {entry["name"]: _site_budget(name, entry) for entry in catalog}
    with registry.atomic():
        rows = _import_catalog(registry, name, catalog, budgets)
        registry.add_site(name, info={**registry.get_site(name)["info"], "versions": info.get("versions", {})})
        registry.record_action("site.sync", name, {"datasets": [row["ref"] for row in rows], "budgets": {
            f"{name}/{dataset}": list(budget) for dataset, budget in budgets.items() if budget is not None}})
    return rows


def _import_catalog(registry: RegistryStore, name: str, catalog: list[dict], budgets: dict) -> list[DatasetRow]:
    rows = []
    for entry in catalog:
        ref = f"{name}/{entry['name']}"
        try:
            latest = registry.get_dataset(ref)
        except TffprodError:
            latest = None
        client_id, num_clients = entry.get("client_id"), int(entry.get("num_clients") or 1)
        if (latest and latest["content_hash"] == entry["content_hash"] and latest["schema"] == entry["schema"]
                and latest.get("client_id") == client_id and latest["num_clients"] == num_clients):
            rows.append(latest)
            continue
        rows.append(registry.add_dataset(
            site=name, name=entry["name"], path=f"{SITE_PATH_PREFIX}{name}/{entry['name']}",
            format=entry["format"], schema=entry["schema"], num_examples=entry["num_examples"],
            content_hash=entry["content_hash"], client_id=client_id, num_clients=num_clients,
        ))
    for dataset, budget in budgets.items():
        if budget is not None:
            registry.set_budget(name, dataset, epsilon=budget[0], delta=budget[1], source="site")
    return rows
