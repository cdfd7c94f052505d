"""Registering datasets: validate a site's file against its schema, then record it.

TF-free: files are read by ``tffprod.data.files``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from tffprod.data.clients import check_client_id, client_ids
from tffprod.data.files import content_hash, detect_format, validate_file
from tffprod.errors import DatasetError, NotFoundError, SpecError
from tffprod.registry.privacy import check_budget
from tffprod.data.schema import Schema

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore



def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``SITE/NAME`` into its parts; raise NotFoundError on anything else."""
    site, sep, name = ref.partition("/")
    if not sep or not site or not name or "/" in name or ":" in name:
        raise NotFoundError(f"dataset reference {ref!r} is not of the form SITE/NAME")
    return site, name


def _coordinator_budget(registry: RegistryStore, site: str, name: str,
                        budget: tuple[float, float]) -> tuple[float, float]:
    """Check a coordinator-set budget before anything is written."""
    try:
        epsilon, delta = check_budget(*budget)
    except (TypeError, ValueError) as e:
        raise SpecError(f"dataset {site}/{name}: {e}") from None
    existing = registry.get_budget(site, name)
    if existing is not None and existing["source"] == "site":
        raise DatasetError(
            f"dataset {site}/{name}: its budget (epsilon={existing['epsilon']:g}, delta={existing['delta']:g}) "
            "is set by the site's config and a coordinator cannot override it; change it at the site"
        )
    return epsilon, delta


def count_clients(path: str | Path, fmt: str, column: str) -> int:
    """How many distinct clients column ``column`` of the file names (TF-free).

    Raises:
        DatasetError: the column is missing or a row's client id is empty or malformed.
    """
    return len(client_ids(path, fmt, column))


def register_dataset(registry: RegistryStore, ref: str, path: str | Path, *, schema: Schema,
                     fmt: Optional[str] = None, budget: Optional[tuple[float, float]] = None,
                     client_id: Optional[str] = None) -> Mapping[str, Any]:
    """Validate the file at ``path`` against ``schema`` and record it as dataset ``ref``.

    Args:
        registry: the open registry.
        ref: ``SITE/NAME``.
        path: the data file.
        schema: what every example must match.
        fmt: ``tfrecord`` or ``csv`` (default: by suffix).
        budget: optional ``(epsilon, delta)`` privacy budget for the dataset's identity
            (every version), recorded with ``source="coordinator"``.
        client_id: the column that says which client (customer, patient) each row
            belongs to; the dataset is then many clients, counted here, and DP protects
            each client. Without it the dataset is one client (site-level).

    Returns:
        The registry row (a new version only when the content or schema changed);
        with ``budget`` given, plus ``"budget"``: the stored budget.

    Raises:
        DatasetError: the file is missing, corrupt, or does not match the schema; or
            ``budget`` is given but the dataset's budget comes from the site's config.
        SpecError: ``budget`` is out of range (epsilon > 0, 0 < delta < 1).

    Budget problems are found before anything is written.
    """
    site, name = parse_ref(ref)
    if client_id is not None:
        check_client_id(client_id, what="--client-id")
    checked = None if budget is None else _coordinator_budget(registry, site, name, budget)
    path = Path(path).resolve()
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    fmt = fmt or detect_format(path)
    num_examples = validate_file(path, fmt, schema)
    if num_examples == 0:
        raise DatasetError(f"{path}: holds no examples")
    num_clients = None if client_id is None else count_clients(path, fmt, client_id)
    digest = content_hash(path)
    with registry.atomic():
        row = registry.add_dataset(site=site, name=name, path=str(path), format=fmt, schema=schema.to_dict(),
                                   num_examples=num_examples, content_hash=digest, client_id=client_id,
                                   num_clients=num_clients)
        registry.record_action("dataset.register", row["ref"], {
            "path": row["path"], "content_hash": row["content_hash"], "num_examples": row["num_examples"],
            "client_id": row.get("client_id")})
        if checked is None:
            return row
        epsilon, delta = checked
        stored = registry.set_budget(site, name, epsilon=epsilon, delta=delta, source="coordinator")
        registry.record_action("privacy.budget", f"{site}/{name}", {
            key: stored[key] for key in ("epsilon", "delta", "source")})
    return {**row, "budget": stored}
