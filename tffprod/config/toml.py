"""TOML files: reading them with ``tomllib``, and writing the plain data configs hold.

The standard library reads TOML but does not write it; the writer here handles what
session specs and site configs hold: strings, numbers, booleans, paths, arrays, tables
and arrays of tables. Problems raise :class:`tffprod.errors.SpecError` naming the file
or the key. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping, Union

from tffprod.errors import SpecError

PathLike = Union[str, "os.PathLike[str]"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


# ---------------------------------------------------------------- reading


def read_toml(path: Any, *, what: str) -> dict[str, Any]:
    """The TOML table in ``path``; a SpecError names the file when it cannot be read or parsed.

    Args:
        path: the file.
        what: how messages call the file (``"spec"``, ``"site config"``).
    """
    where = os.fspath(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise SpecError(f"{where}: cannot read {what}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{where}: invalid TOML: {' '.join(str(e).split())}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise SpecError(f"{where}: invalid TOML: arrays or tables nested too deeply") from None


# ---------------------------------------------------------------- writing


def write_toml(path: PathLike, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as a TOML file (see :func:`toml_document`), replacing it atomically.

    The folder is created if needed; nothing is written when a value has no TOML form.

    Returns:
        The path written.

    Raises:
        SpecError: a value has no TOML form (e.g. None).
    """
    path = Path(path)
    text = toml_document(data)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def toml_document(data: Mapping[str, Any]) -> str:
    """``data`` as a TOML document: nested mappings become tables, lists of mappings arrays of tables.

    Raises:
        SpecError: a value has no TOML form (e.g. None), naming its dotted key.
    """
    lines: list[str] = []
    _toml_table(lines, (), data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_table(lines: list[str], prefix: tuple[str, ...], table: Mapping[str, Any]) -> None:
    """Scalars and arrays first, then sub-tables and arrays of tables (as TOML requires)."""

    def is_table_array(value: Any) -> bool:
        return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Mapping) for v in value)

    nested = {k: v for k, v in table.items() if isinstance(v, Mapping) or is_table_array(v)}
    for key, value in table.items():
        if key not in nested:
            lines.append(f"{_toml_key(key)} = {_toml_scalar('.'.join(prefix + (key,)), value)}")
    for key, value in nested.items():
        header = ".".join(_toml_key(k) for k in prefix + (key,))
        if isinstance(value, Mapping):
            # A table holding only sub-tables needs no header of its own ([datasets] before [datasets.a]).
            if not value or any(not (isinstance(v, Mapping) or is_table_array(v)) for v in value.values()):
                lines += ["", f"[{header}]"]
            _toml_table(lines, prefix + (key,), value)
        else:
            for item in value:
                lines += ["", f"[[{header}]]"]
                _toml_table(lines, prefix + (key,), item)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else toml_string(key)


def _toml_scalar(key: str, value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    try:
        return toml_value(value)
    except TypeError:
        raise SpecError(f"{key!r}: cannot write {type(value).__name__} {value!r} as TOML") from None


def toml_value(value: Any) -> str:
    """TOML for a boolean, number, string or (nested) array of them.

    Raises:
        TypeError: any other value.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def toml_string(text: str) -> str:
    """A TOML basic string: quoted, with quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
