"""Small pure helpers of the registry: timestamps, JSON columns, names, refs, ids.

Nothing here touches SQLite, so every rule about how values look on disk and
how users spell references lives in one short module.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
from typing import Any

from tffprod.config.names import NAME
from tffprod.errors import NotFoundError, SpecError

_DATASET_REF = re.compile(r"^(?P<site>[^/:]+)/(?P<name>[^/:]+)(?::(?P<version>[0-9]+))?$")
_MODEL_REF = re.compile(r"^(?P<name>[^/:]+)(?::(?P<version>[0-9]+))?$")


def utc_now() -> str:
    """Returns the current time as an ISO-8601 UTC string with microseconds.

    All timestamps share this fixed-width format, so sorting the strings sorts
    the times.
    """
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Returns ``end - start`` in seconds, or None if either is missing."""
    if start is None or end is None:
        return None
    delta = datetime.datetime.fromisoformat(end) - datetime.datetime.fromisoformat(start)
    return delta.total_seconds()


def _json_default(value: Any) -> Any:
    # NumPy scalars and arrays (as metrics often are) without importing NumPy.
    for method in ("tolist", "item"):
        if callable(getattr(value, method, None)):
            return getattr(value, method)()
    raise TypeError(f"value of type {type(value).__name__} cannot be stored as JSON")


def to_json(value: Any) -> str:
    """Encodes a JSON column value; keys are sorted so equal values store equally.

    Raises:
        TypeError: if ``value`` holds something JSON cannot represent.
    """
    return json.dumps(value, sort_keys=True, default=_json_default)


def from_json(text: str | None) -> Any:
    """Decodes a JSON column value (None stays None)."""
    return None if text is None else json.loads(text)


def check_name(kind: str, name: str) -> str:
    """Checks a site, dataset or model name: letters, digits, ``.``, ``_``, ``-``.

    Args:
        kind: What is being named, for the error message ("site", "dataset", ...).
        name: The proposed name.

    Returns:
        ``name`` unchanged.

    Raises:
        SpecError: if the name is empty or holds other characters (such as the
            ``/`` and ``:`` that references use as separators).
    """
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise SpecError(
            f"{kind} name {name!r} is invalid: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def parse_dataset_ref(ref: str) -> tuple[str, str, int | None]:
    """Splits ``SITE/NAME`` or ``SITE/NAME:VERSION`` into its parts.

    Returns:
        ``(site, name, version)``; ``version`` is None when the ref has none.

    Raises:
        NotFoundError: if ``ref`` is not of that form (nothing can match it).
    """
    match = _DATASET_REF.match(ref) if isinstance(ref, str) else None
    if match is None:
        raise NotFoundError(f"malformed dataset ref {ref!r}: expected SITE/NAME or SITE/NAME:VERSION")
    version = match["version"]
    return match["site"], match["name"], None if version is None else int(version)


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """Splits ``NAME`` or ``NAME:VERSION`` into ``(name, version)``.

    Raises:
        NotFoundError: if ``ref`` is not of that form.
    """
    match = _MODEL_REF.match(ref) if isinstance(ref, str) else None
    if match is None:
        raise NotFoundError(f"malformed model ref {ref!r}: expected NAME or NAME:VERSION")
    version = match["version"]
    return match["name"], None if version is None else int(version)


def dataset_ref(site: str, name: str, version: int) -> str:
    """Formats the full reference of one dataset version."""
    return f"{site}/{name}:{version}"


def new_session_id(now: str) -> str:
    """Returns a time-sortable session id such as ``s-20261125-183000-ab12``.

    Args:
        now: The session's ``created_at`` timestamp (from :func:`utc_now`).
    """
    stamp = datetime.datetime.fromisoformat(now).strftime("%Y%m%d-%H%M%S")
    return f"s-{stamp}-{secrets.token_hex(2)}"
