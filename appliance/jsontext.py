"""JSON text on the hot path: orjson, with the standard library behind it.

Every change is encoded and decoded several times on its way (the
transformer's ``changes`` columns, the enricher's message, the sink's parse
and its jsonb parameters); with the standard library that was 15-30 % of
those legs' CPU at full rate (docs/profiles.md). orjson does the same work
in C, several times faster. Where the two differ, this module keeps the
standard library's meaning:

- orjson reads an integer outside [-2**63, 2**64 - 1] as a float, silently:
  a text with 20 or more digits in a row, or a minus sign followed by 19, is
  read by :func:`json.loads` instead (a barcode in a string costs the slower
  read, never a wrong number). Every run of 19 digits fits below 2**64, and
  the relay's versions are 19-digit numbers (epoch x 10**10 + sequence), so
  a bound of 19 sent every message down the slow path;
- orjson refuses what it cannot write exactly (integers beyond 64 bits,
  keys that are not strings, lone surrogates): those values go to
  :func:`json.dumps`, non-ASCII escaped;
- orjson writes a ``NaN`` or infinite float as ``null`` (the standard
  library writes ``NaN``, which is not JSON and which PostgreSQL's jsonb
  refuses). None reaches it: the decoder makes a field error of a
  non-finite float, the scripts' results are checked (``scripting.checked``)
  and the sink reads messages with ``allow_nan=False``, so such a message is
  parked as bad JSON. A text holding them is otherwise read by
  :func:`json.loads` as before.

The one spelling that differs is a float's exponent (``1.5e-7`` here,
``1.5e-07`` from :func:`json.dumps`): the same number for every reader,
PostgreSQL's jsonb included. Identities that are stored and compared as text
across versions (the hub's ``pk``, the RRN map's keys) keep their own
standard-library spelling and do not use this module.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

# Every digit made a "9": a run of digits is then a plain substring search,
# several times cheaper than a regular expression (and than the parse).
# Worked bounds: 99999999999999999999 (20 digits) > 2**64 - 1 and
# -9999999999999999999 (19) < -2**63 are read as floats by orjson, while
# 9999999999999999999 (19) < 2**64 and -999999999999999999 (18) > -2**63
# are exact; so these two patterns are the whole test.
_DIGITS_AS_NINE = bytes.maketrans(b"0123456789", b"9" * 10)
_LONG_RUN = b"9" * 20
_LONG_NEGATIVE = b"-" + b"9" * 19
_SORTED = orjson.OPT_SORT_KEYS


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is beyond a double (infinite)")
    return value


def loads(text: str | bytes | bytearray | memoryview, *, allow_nan: bool = True) -> Any:
    """Parse JSON text; raises ``ValueError`` on bad text, as ``json.loads``.

    ``allow_nan=False`` refuses ``NaN`` and ``Infinity`` (not JSON; the hub's
    jsonb refuses them too) and numbers too large for a double (``1e400``,
    which would read as infinity and be written as ``null``).
    """
    if isinstance(text, str):
        try:
            data = text.encode()
        except UnicodeEncodeError:  # a lone surrogate: orjson cannot read it
            data = b""
    else:
        data = bytes(text)
    nines = data.translate(_DIGITS_AS_NINE)
    if data and _LONG_RUN not in nines and _LONG_NEGATIVE not in nines:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # NaN, Infinity, surrogates or bad text: the standard library
    source = text if isinstance(text, str) else data
    if allow_nan:
        return json.loads(source)
    return json.loads(source, parse_constant=_refuse_constant, parse_float=_finite)


def compact(value: Any) -> str:
    """Compact JSON in the value's own key order, non-ASCII kept as is.

    A value orjson refuses (integers beyond 64 bits, keys that are not
    strings, lone surrogates) is written by the standard library with
    non-ASCII escaped, so a lone surrogate stays a ``\\ud800`` escape that a
    reader refuses instead of a character no UTF-8 writer can write.
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"))


def canonical(value: Any) -> str:
    """Compact JSON with sorted keys (the transformer's one spelling).

    The same value always takes the same path, so it always has the same
    spelling; what orjson refuses is written as in :func:`compact`.
    """
    try:
        return orjson.dumps(value, option=_SORTED).decode()
    except TypeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
