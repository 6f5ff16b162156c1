"""ODBC values spelled as the decoder spells the same field in JSON.

A row read through ODBC (the guardian's table reads, the transformer's RRN map
at F RG) must compare equal to the images the journal decoder produces, so
both ends share one spelling (contracts.md "Values in JSON"): CHAR without
trailing blanks, DECIMAL as text with exactly ``scale`` decimals (``-0`` as
``0``), dates and times formatted, binary as upper-case hex, REAL as the
shortest decimal of its float32, TIMESTAMP with ``max(6, p)`` fraction digits.
"""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal
from typing import Any

from appliance.decoding.numbers import floating, scaled
from appliance.errors import SourceError
from appliance.layouts import Column

_REAL = floating(4)


def _text(text: str) -> str | None:
    """Null for a text holding U+0000: the decoder refuses it (a field error,
    the field null; :func:`appliance.decoding.text.refusing_nul`)."""
    return None if "\x00" in text else text


def json_value(column: Column, value: Any, hex_column: bool = False) -> Any:
    """One fetched value as the decoder writes the same field in JSON."""
    if value is None:
        return None
    kind = column.data_type
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex().upper()
    if kind in ("CHAR", "GRAPHIC"):
        return _text(str(value).rstrip(" "))
    if kind in ("VARCHAR", "VARG"):
        return _text(str(value))
    if kind in ("BINARY", "VARBIN") or hex_column:
        return str(value)
    if kind in ("DECIMAL", "NUMERIC") or (
        kind in ("SMALLINT", "INTEGER", "BIGINT") and column.scale
    ):
        return _decimal_text(Decimal(value), column.scale or 0)
    if kind in ("SMALLINT", "INTEGER", "BIGINT"):
        return int(value)
    if kind == "FLOAT":
        number = float(value)
        return _REAL(struct.pack(">f", number)) if column.length == 4 else number
    if kind == "DATE":
        return _date(value).isoformat()
    if kind == "TIME":
        return _time(value).strftime("%H:%M:%S")
    if kind == "TIMESTMP":
        return _timestamp_text(value, column.timestamp_precision)
    raise SourceError(f"column {column.name}: cannot read type {kind}")


def _decimal_text(value: Decimal, scale: int) -> str:
    units = int(value.scaleb(scale).to_integral_value())
    return scaled(str(abs(units)), scale, units < 0)


def _date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value).strip())


def _time(value: Any) -> dt.time:
    if isinstance(value, dt.time):
        return value
    return dt.time.fromisoformat(str(value).strip().replace(".", ":"))


def _timestamp_text(value: Any, precision: int) -> str:
    """The decoder's spelling: seconds, then max(6, p) fraction digits.

    ODBC gives microseconds: the digits past the sixth of a TIMESTAMP(7..12)
    are zeros here. TODO(#5): read them as text on IBM i, when a store has
    such a column.
    """
    stamp = (
        value
        if isinstance(value, dt.datetime)
        else dt.datetime.fromisoformat(str(value).strip())
    )
    digits = f"{stamp.microsecond:06d}"[: max(precision, 0)].ljust(
        max(6, precision), "0"
    )
    return stamp.replace(microsecond=0).isoformat() + "." + digits
