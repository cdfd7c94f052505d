"""The data formats, by name: the one place a format is registered (TF-free, cheap to import).

Adding a format is its module here (a :class:`~tffprod.data.formats.base.DataFormat`) and one
entry in :data:`FORMATS`; :mod:`tffprod.data.files`, :mod:`tffprod.data.clients`,
:mod:`tffprod.data.tfdata`, site configs and ``tffprod dataset register --format`` all read
the formats from here. tests/contract/test_formats.py runs every registered format through
the same suite.
"""

from __future__ import annotations

from typing import Optional

from tffprod.data.formats.base import DataFormat
from tffprod.data.formats.csv import CSV
from tffprod.data.formats.tfrecord import TFRECORD
from tffprod.errors import DatasetError

__all__ = ["FORMATS", "DataFormat", "get_format"]

#: Format name -> format, in a stable order (messages list them in this order).
#: Iterating, ``in`` and ``", ".join(FORMATS)`` see the names.
FORMATS: dict[str, DataFormat] = {fmt.name: fmt for fmt in (TFRECORD, CSV)}


def get_format(name: str, path: Optional[object] = None) -> DataFormat:
    """The format called ``name``.

    Raises:
        DatasetError: one line, ``"<path>: unknown format 'x'; expected one of tfrecord, csv"``
            (without the path when none is given).
    """
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        where = "" if path is None else f"{path}: "
        raise DatasetError(f"{where}unknown format {name!r}; expected one of {', '.join(FORMATS)}") from None
