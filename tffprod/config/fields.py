"""Checks of the values read from TOML tables: session specs, their tables, site configs.

Each check returns the value (numbers as floats) or raises one :class:`SpecError` line
that names the key as the file spells it, with the value it got::

    integer("worker.port", 70000, minimum=0, maximum=65535)
    # SpecError: 'worker.port' must be an integer between 0 and 65535, got 70000

Nothing here imports anything heavy.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Mapping, Optional, Sequence

from tffprod.errors import SpecError

_TOML_TYPES = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (list, "array"),
               (tuple, "array"), (Mapping, "table"))


def type_name(value: Any) -> str:
    """How TOML calls the type of ``value``, for messages."""
    for kind, name in _TOML_TYPES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a hostile file can hold huge values)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def known_keys(prefix: str, table: Mapping[str, Any], known: Sequence[str]) -> None:
    """Refuses the first key of ``table`` not in ``known``; ``prefix`` is ``"worker."`` etc."""
    for key in table:
        if key not in known:
            raise SpecError(f"unknown key '{prefix}{key}'{did_you_mean(key, known)}")


def table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{key!r} must be a table, got {type_name(value)} {shown(value)}")
    return value


def string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{key!r} must be a string, got {type_name(value)} {shown(value)}")
    return value


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{key!r} must be true or false, got {type_name(value)} {shown(value)}")
    return value


def choice(key: str, value: Any, choices: Sequence[str]) -> str:
    string(key, value)
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise SpecError(f"{key!r} must be one of {options}, got {shown(value)}{did_you_mean(value, choices)}")
    return value


def integer(key: str, value: Any, *, minimum: int, maximum: Optional[int] = None) -> int:
    """An integer in ``[minimum, maximum]``; bools are not integers here."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{key!r} must be an integer, got {type_name(value)} {shown(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise SpecError(f"{key!r} must be an integer {bounds}, got {shown(value)}")
    return value


def number(key: str, value: Any, ok: Callable[[float], bool], want: str) -> float:
    """A finite number for which ``ok`` holds, as a float (ints are accepted, bools are not);
    ``want`` describes it: ``"a number > 0"``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{key!r} must be a number, got {type_name(value)} {shown(value)}")
    try:
        result = float(value)
    except OverflowError:  # an integer too large for a float
        result = math.inf
    if not math.isfinite(result) or not ok(result):
        raise SpecError(f"{key!r} must be {want}, got {shown(value)}")
    return result
