"""The site config: the TOML file a site operator writes for ``tffprod site serve``.

Read with the standard library's ``tomllib`` and validated strictly, like session
specs (:mod:`tffprod.sessions.spec`): an unknown key, a wrong type, a missing field or a bad
value raises :class:`tffprod.errors.SpecError` with one line naming the file, the
key and the problem. Relative paths are resolved against the config file's folder.
Nothing here imports TensorFlow (a dataset's ``task`` is imported for its schema;
tasks import TensorFlow only when their model is built).

Example::

    name = "hospital-a"                 # the site's name
    listen = "0.0.0.0:7001"             # the gateway's public address; port 0 = pick one
    state_dir = "state"                 # audit log, worker log, site.json (created)
    insecure_dev = false                # plaintext, loopback only: development only
    computations = "approved"           # run only approved plans (the default); "any" runs any
    federations = ["hospitals"]         # optional: serve only sessions of these federations
                                        # computation: development only, reported loudly

    [tls]                               # required unless insecure_dev
    cert = "certs/hospital-a.crt"
    key = "certs/hospital-a.key"
    ca = "certs/ca.crt"

    [[coordinators]]                    # who may call; at least one
    identity = "coordinator"            # certificate CN
    token_sha256 = "<64 hex>"           # hash_token(its bearer token); never the token

    [worker]                            # optional
    port = 0                            # 0 = a free loopback port
    max_message_mb = 2000
    max_restarts = 5                    # within restart_window_s, then the site stops
    restart_window_s = 300

    [datasets.train]                    # catalog name -> local file
    path = "data/train.tfrecord"
    format = "tfrecord"                 # optional: by suffix
    task = "tffprod.examples.digits:task"   # the schema, from a task or
    # schema_file = "schema.json"       # from a JSON schema file
    budget = { epsilon = 8.0, delta = 1e-5 }   # optional: the privacy budget of this data
                                        # (every version; sync_site mirrors it to the registry)
    client_id = "customer_id"           # optional: the rows belong to many clients; DP protects each
                                        # (coordinators see only how many; the site serves each
                                        # client's rows from its own shard under state_dir/clients)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from tffprod.config import fields
from tffprod.data.files import FORMATS, content_hash, detect_format, validate_file
from tffprod.errors import DatasetError, SpecError, TaskLoadError
from tffprod.executors.addresses import is_loopback
from tffprod.data.schema import Schema
from tffprod.config.names import LOWER_NAME, NAME, federation_name
from tffprod.task import resolve_task, task_path
from tffprod.config.toml import read_toml, write_toml

from tffprod.executors.datarefs import CatalogEntry

PathLike = Union[str, "os.PathLike[str]"]

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_MAX_MESSAGE_MB = 2047  # gRPC's message limit is a signed 32-bit byte count

_TOP_REQUIRED = ("name", "listen", "coordinators", "datasets")
_TOP_KEYS = _TOP_REQUIRED + ("state_dir", "insecure_dev", "computations", "federations", "tls", "worker")
COMPUTATION_POLICIES = ("approved", "any")
_TLS_KEYS = ("cert", "key", "ca")
_COORDINATOR_KEYS = ("identity", "token_sha256")
_WORKER_KEYS = ("port", "max_message_mb", "max_restarts", "restart_window_s", "isolation")
WORKER_ISOLATION = ("netns", "none")
_DATASET_KEYS = ("path", "format", "task", "schema_file", "budget", "client_id")
_BUDGET_KEYS = ("epsilon", "delta")


# ---------------------------------------------------------------- the config


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """The gateway's certificate, its private key and the CA that signs its callers."""

    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """The PEM bytes as the gateway takes them: ``(key, cert, ca)``.

        Raises:
            SpecError: a file cannot be read.
        """
        pems = []
        for key in ("key", "cert", "ca"):
            path = getattr(self, key)
            try:
                pems.append(path.read_bytes())
            except OSError as e:
                raise SpecError(f"'tls.{key}': cannot read {path}: {e.strerror or e}") from None
        return pems[0], pems[1], pems[2]


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """How the site's ``worker_binary`` is run and supervised (the ``[worker]`` table)."""

    port: int = 0
    max_message_mb: int = 2000
    max_restarts: int = 5
    restart_window_s: float = 300.0
    isolation: str = "netns"  # the worker in its own network namespace behind a Unix socket; or "none"


@dataclasses.dataclass(frozen=True)
class DatasetDecl:
    """One catalog entry as declared: a local file, its format, the schema it must match
    and, optionally, its privacy budget ``{"epsilon": float, "delta": float}`` and the column
    naming each row's client (``client_id``; None = the whole dataset is one client)."""

    path: Path
    format: str
    schema: Schema
    budget: Optional[dict] = dataclasses.field(default=None, hash=False)
    client_id: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class SiteConfig:
    """A validated site config (see the module docstring for the file format).

    Attributes:
        name: the site's name.
        listen: the gateway's public address, ``host:port`` (port 0 = pick a free one).
        state_dir: where the audit log, the worker log and ``site.json`` go (absolute).
        insecure_dev: plaintext gRPC, no certificates; only on a loopback address.
        tls: the gateway's certificate files; None only with ``insecure_dev``.
        federations: the federations whose sessions this site serves, or None (any session).
        computations: ``"approved"`` (only computations of plans approved with
            ``tffprod site approve``) or ``"any"`` (any computation: development only).
        coordinators: certificate identity (CN) -> SHA-256 hex of its bearer token.
        worker: the worker's port and supervision settings.
        datasets: catalog name -> declared dataset.
        source: the file this was read from, if any.
    """

    name: str
    listen: str
    state_dir: Path
    insecure_dev: bool
    tls: Optional[TLSFiles]
    coordinators: Mapping[str, str]
    worker: WorkerSettings
    datasets: Mapping[str, DatasetDecl]
    computations: str = "approved"
    federations: Optional[tuple[str, ...]] = None
    source: Optional[Path] = dataclasses.field(default=None, compare=False)

    @property
    def listen_host(self) -> str:
        """The host part of ``listen`` (without IPv6 brackets)."""
        return _split_address("listen", self.listen)[0]

    @property
    def listen_port(self) -> int:
        """The port part of ``listen`` (0 = the gateway picks one)."""
        return _split_address("listen", self.listen)[1]

    def build_catalog(self) -> dict[str, CatalogEntry]:
        """Validate every dataset file against its schema and hash it.

        Returns:
            catalog name -> ``tffprod.executors.datarefs.CatalogEntry``.

        Raises:
            DatasetError: one line naming the config, the dataset and what is wrong with its file.
        """
        from tffprod.data.clients import split_by_client

        catalog = {}
        for name, decl in self.datasets.items():
            where = f"{self.source}: dataset {name!r}" if self.source else f"dataset {name!r}"
            try:
                if not decl.path.is_file():
                    raise DatasetError(f"{decl.path}: no such file")
                num_examples = validate_file(decl.path, decl.format, decl.schema)
                digest = content_hash(decl.path)
                shards = () if decl.client_id is None else tuple(str(p) for p in split_by_client(
                    decl.path, decl.format, decl.client_id,
                    self.state_dir / "clients" / f"{name}-{digest.removeprefix('sha256:')[:16]}"))
            except DatasetError as e:
                raise DatasetError(f"{where}: {e}") from None
            catalog[name] = CatalogEntry(
                name=name,
                path=str(decl.path),
                format=decl.format,
                schema=decl.schema.to_dict(),
                num_examples=num_examples,
                content_hash=digest,
                budget=None if decl.budget is None else dict(decl.budget),
                client_id=decl.client_id,
                num_clients=len(shards) if decl.client_id else 1,
                client_paths=shards,
            )
        return catalog


def hash_token(token: str) -> str:
    """The SHA-256 hex digest of a bearer token: what a site config stores instead of the token.

    Raises:
        SpecError: the token is empty or not a string.
    """
    if not isinstance(token, str) or not token:
        raise SpecError("a bearer token must be a non-empty string")
    try:
        return hashlib.sha256(token.encode("utf-8")).hexdigest()
    except UnicodeEncodeError:  # a lone surrogate, e.g. from bytes decoded with surrogateescape
        raise SpecError("a bearer token must be valid Unicode text") from None


def hash_token_file(path: PathLike) -> str:
    """:func:`hash_token` of the bearer token in a file (UTF-8 text; surrounding whitespace ignored).

    Raises:
        SpecError: the file cannot be read, is not UTF-8 text or holds no token.
    """
    try:
        token = Path(path).read_bytes().decode("utf-8").strip()
    except OSError as e:
        raise SpecError(f"cannot read token file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SpecError(f"token file {path} is not UTF-8 text") from None
    if not token:
        raise SpecError(f"token file {path} is empty")
    return hash_token(token)


# ---------------------------------------------------------------- reading


def load_site_config(path: PathLike) -> SiteConfig:
    """Read and validate a site config file.

    Args:
        path: the TOML file; relative paths inside it are resolved against its folder.

    Raises:
        SpecError: one line naming the file, the key and the problem.
    """
    source = Path(path).absolute()
    data = read_toml(path, what="site config")
    try:
        return _parse(data, source)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None


def _parse(data: Mapping[str, Any], source: Path) -> SiteConfig:
    folder = source.parent
    fields.known_keys("", data, _TOP_KEYS)
    for key in _TOP_REQUIRED:
        if key not in data:
            raise SpecError(f"missing required key {key!r}")

    name = fields.string("name", data["name"])
    if not LOWER_NAME.match(name):
        raise SpecError(
            f"'name' must start with a lowercase letter or digit and hold only "
            f"lowercase letters, digits, '.', '_' and '-', got {name!r}"
        )
    listen = fields.string("listen", data["listen"])
    host, listen_port = _split_address("listen", listen)
    insecure_dev = fields.boolean("insecure_dev", data.get("insecure_dev", False))
    state_dir = _path(folder, "state_dir", data.get("state_dir", "state"))
    computations = fields.string("computations", data.get("computations", "approved"))
    if computations not in COMPUTATION_POLICIES:
        raise SpecError(f"'computations' must be \"approved\" or \"any\" (development only), got {computations!r}")
    if computations == "any" and not is_loopback(host):
        raise SpecError(f"'computations' = \"any\" runs any computation a coordinator sends and is refused unless "
                        f"'listen' is a loopback address (127.0.0.1, ::1 or localhost), got {listen!r}")
    federations = _federations(data["federations"]) if "federations" in data else None

    tls = None
    if insecure_dev:
        if not is_loopback(host):
            raise SpecError(
                f"'insecure_dev' = true serves plaintext without certificates and is refused unless "
                f"'listen' is a loopback address (127.0.0.1, ::1 or localhost), got {listen!r}"
            )
        if "tls" in data:
            raise SpecError("'tls' and 'insecure_dev' = true contradict each other: remove one")
    else:
        if "tls" not in data:
            raise SpecError("missing required table 'tls' (cert, key, ca); or set insecure_dev = true on loopback")
        tls = _tls(folder, fields.table("tls", data["tls"]))

    coordinators = _coordinators(data["coordinators"])
    worker = _worker(fields.table("worker", data.get("worker", {})))
    if worker.port and worker.port == listen_port:
        raise SpecError(f"'worker.port' = {worker.port} is the port 'listen' uses; leave it 0 or pick another")
    datasets = _datasets(folder, fields.table("datasets", data["datasets"]))

    return SiteConfig(
        name=name,
        listen=listen,
        state_dir=state_dir,
        insecure_dev=insecure_dev,
        tls=tls,
        coordinators=coordinators,
        worker=worker,
        datasets=datasets,
        computations=computations,
        federations=federations,
        source=source,
    )


def _federations(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise SpecError("'federations' must be a non-empty list of federation names, "
                        f"got {fields.type_name(value)} {value!r}")
    return tuple(federation_name(v) for v in value)


def _tls(folder: Path, table: Mapping[str, Any]) -> TLSFiles:
    fields.known_keys("tls.", table, _TLS_KEYS)
    paths = {}
    for key in _TLS_KEYS:
        if key not in table:
            raise SpecError(f"missing required key 'tls.{key}'")
        paths[key] = _path(folder, f"tls.{key}", table[key])
        if not paths[key].is_file():
            raise SpecError(f"'tls.{key}': no such file {paths[key]}")
    return TLSFiles(**paths)


def _coordinators(value: Any) -> dict[str, str]:
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise SpecError(f"'coordinators' must be an array of tables ([[coordinators]]), got {fields.type_name(value)}")
    if not value:
        raise SpecError("'coordinators' must name at least one coordinator")
    out: dict[str, str] = {}
    for i, item in enumerate(value):
        key = f"coordinators[{i}]"
        fields.known_keys(f"{key}.", item, _COORDINATOR_KEYS)
        for field in _COORDINATOR_KEYS:
            if field not in item:
                raise SpecError(f"missing required key '{key}.{field}'")
        identity = fields.string(f"{key}.identity", item["identity"])
        if not identity or identity != identity.strip() or not identity.isprintable():
            raise SpecError(f"'{key}.identity' must be a certificate common name, got {identity!r}")
        if identity in out:
            raise SpecError(f"'{key}.identity': coordinator {identity!r} is listed twice")
        digest = fields.string(f"{key}.token_sha256", item["token_sha256"])
        if not _SHA256.match(digest):
            raise SpecError(
                f"'{key}.token_sha256' must be 64 hex digits (the SHA-256 of the token, "
                f"see tffprod.executors.config.hash_token), got {digest!r}"
            )
        out[identity] = digest.lower()
    return out


def _worker(table: Mapping[str, Any]) -> WorkerSettings:
    fields.known_keys("worker.", table, _WORKER_KEYS)
    defaults = WorkerSettings()
    port = fields.integer("worker.port", table.get("port", defaults.port), minimum=0, maximum=65535)
    mb = fields.integer("worker.max_message_mb", table.get("max_message_mb", defaults.max_message_mb),
                        minimum=1, maximum=_MAX_MESSAGE_MB)
    restarts = fields.integer("worker.max_restarts", table.get("max_restarts", defaults.max_restarts), minimum=0)
    window = fields.number("worker.restart_window_s", table.get("restart_window_s", defaults.restart_window_s),
                           lambda v: v > 0, "a number > 0")
    isolation = fields.string("worker.isolation", table.get("isolation", defaults.isolation))
    if isolation not in WORKER_ISOLATION:
        raise SpecError(f"'worker.isolation' must be \"netns\" (the default) or \"none\", got {isolation[:40]!r}")
    return WorkerSettings(port=port, max_message_mb=mb, max_restarts=restarts, restart_window_s=window,
                          isolation=isolation)


def _datasets(folder: Path, table: Mapping[str, Any]) -> dict[str, DatasetDecl]:
    if not table:
        raise SpecError("'datasets' must declare at least one dataset ([datasets.NAME] with a path)")
    out = {}
    for name, decl in table.items():
        key = f"datasets.{name}"
        if not NAME.match(name):
            raise SpecError(f"{key!r}: a dataset name holds only letters, digits, '.', '_' and '-'")
        decl = fields.table(key, decl)
        fields.known_keys(f"{key}.", decl, _DATASET_KEYS)
        if "path" not in decl:
            raise SpecError(f"missing required key '{key}.path'")
        path = _path(folder, f"{key}.path", decl["path"])
        if "format" in decl:
            fmt = fields.string(f"{key}.format", decl["format"])
            if fmt not in FORMATS:
                options = ", ".join(repr(f) for f in FORMATS)
                raise SpecError(f"'{key}.format' must be one of {options}, "
                                f"got {fmt!r}{fields.did_you_mean(fmt, tuple(FORMATS))}")
        else:
            try:
                fmt = detect_format(path)
            except DatasetError:
                raise SpecError(
                    f"'{key}.format' is needed: the suffix of {path.name!r} names no format "
                    f"(use {' or '.join(f.suffixes[0] for f in FORMATS.values())}, or set format)"
                ) from None
        budget = _budget(f"{key}.budget", decl["budget"]) if "budget" in decl else None
        client_id = None
        if "client_id" in decl:
            from tffprod.data.clients import check_client_id

            client_id = check_client_id(decl["client_id"], what=f"'{key}.client_id'")
        out[name] = DatasetDecl(path=path, format=fmt, schema=_schema(folder, key, decl), budget=budget,
                                client_id=client_id)
    return out


def _budget(key: str, value: Any) -> dict[str, float]:
    """``budget = { epsilon = 8.0, delta = 1e-5 }``: epsilon > 0 and 0 < delta < 1, both required."""
    table = fields.table(key, value)
    fields.known_keys(f"{key}.", table, _BUDGET_KEYS)
    for field in _BUDGET_KEYS:
        if field not in table:
            raise SpecError(f"missing required key '{key}.{field}'")
    return {"epsilon": fields.number(f"{key}.epsilon", table["epsilon"], lambda v: v > 0, "a number > 0"),
            "delta": fields.number(f"{key}.delta", table["delta"], lambda v: 0 < v < 1, "a number > 0 and < 1")}


def _schema(folder: Path, key: str, decl: Mapping[str, Any]) -> Schema:
    if ("task" in decl) == ("schema_file" in decl):
        raise SpecError(f"{key!r} needs exactly one of 'task' or 'schema_file' (where its schema comes from)")
    if "task" in decl:
        from tffprod.task import load_task

        task = resolve_task(task_path(f"{key}.task", decl["task"]), str(folder / "_"))
        try:
            return load_task(task).schema
        except TaskLoadError as e:
            raise SpecError(f"'{key}.task': {e}") from None
    from tffprod.data.schema import load_schema_file

    path = _path(folder, f"{key}.schema_file", decl["schema_file"])
    try:
        return load_schema_file(path)
    except SpecError as e:
        raise SpecError(f"'{key}.schema_file': {e}") from None


# ---------------------------------------------------------------- value checks


def _path(folder: Path, key: str, value: Any) -> Path:
    text = fields.string(key, value)
    if not text:
        raise SpecError(f"{key!r} must be a non-empty path")
    return Path(os.path.normpath(folder / Path(text).expanduser()))


def _split_address(key: str, address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SpecError(f"{key!r} must be 'host:port' (port 0-65535; 0 = pick one), got {address!r}")
    return host, int(port)


# ---------------------------------------------------------------- writing


def write_site_config(path: PathLike, config: Mapping[str, Any]) -> Path:
    """Write a site config file from plain data (the same tables :func:`load_site_config` reads).

    Nothing is validated here (certificates and data may not exist yet); load the file to check it.
    The file is replaced atomically.

    Args:
        path: the TOML file to write.
        config: top-level keys; ``tls``, ``worker`` and ``datasets.NAME`` as dicts,
            ``coordinators`` as a list of dicts. Paths may be ``pathlib.Path``.

    Returns:
        The path written.

    Raises:
        SpecError: a value has no TOML form (e.g. None).
    """
    return write_toml(path, config)
