"""The guardian's hashes: the one definition both ends compute (guardian.md §2).

The store hashes the rows it reads; the hub hashes ODH rows in SQL. Both
must give the same 64-bit numbers for the same row, so this module copies,
in Python, what PostgreSQL prints for ``data::text`` (``jsonb`` output) and
what ``('x' || substr(md5(t), 1, 16))::bit(64)::bigint`` computes.

Worked example: key ``{"ARTNUM": "000123"}`` gives ``pk``
``{"ARTNUM":"000123"}``; its md5 starts ``c0a8...``, so ``pk_hash`` is that
16-digit prefix read as a signed 64-bit integer (negative: the top bit is
set). At ``bits = 6`` the row is in bucket ``prefix = unsigned >> 58``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

MASK64 = (1 << 64) - 1
SIGN64 = 1 << 63

# jsonb's string escapes (PostgreSQL escape_json): the short forms, then
# \u00xx (lower-case hex) for the other control characters.
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def canonical_pk(key: Mapping[str, Any]) -> str:
    """The primary key as one text: compact JSON, sorted keys, UTF-8 kept."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def signed64(value: int) -> int:
    """An unsigned 64-bit number read as two's complement."""
    value &= MASK64
    return value - (1 << 64) if value & SIGN64 else value


def unsigned64(value: int) -> int:
    """A signed 64-bit number as its unsigned bit pattern."""
    return value & MASK64


def _md5_64(text: str) -> int:
    md5 = hashlib.md5(text.encode(), usedforsecurity=False)
    return signed64(int(md5.hexdigest()[:16], 16))


def pk_hash(pk: str) -> int:
    """First 16 hex digits of md5(pk) as a signed 64-bit integer."""
    return _md5_64(pk)


def row_hash(pk: str, data: Mapping[str, Any]) -> int:
    """First 16 hex digits of md5(pk + newline + jsonb text of data), signed."""
    return _md5_64(pk + "\n" + jsonb_text(data))


def prefix_of(hash_value: int, bits: int) -> int:
    """The bucket of ``hash_value`` at ``bits`` (0..64): its top ``bits`` bits."""
    if not 0 <= bits <= 64:
        raise ValueError(f"bits {bits} outside 0..64")
    return unsigned64(hash_value) >> (64 - bits) if bits else 0


def bucket_range(bits: int, prefix: int) -> tuple[int, int]:
    """The signed ``pk_hash`` range (inclusive) of bucket ``(bits, prefix)``.

    For ``bits >= 1`` a bucket never straddles the sign, so the range is
    contiguous in signed order; ``bits = 0`` is every hash.
    """
    if bits == 0:
        return -SIGN64, SIGN64 - 1
    shift = 64 - bits
    low = prefix << shift
    high = low + (1 << shift) - 1
    return signed64(low), signed64(high)


def add_hashes(hashes: Iterable[int]) -> tuple[int, str]:
    """``(count, sum mod 2**64)`` of row hashes; the sum as a decimal string."""
    count = total = 0
    for value in hashes:
        count += 1
        total = (total + value) & MASK64
    return count, str(total)


def jsonb_text(data: Mapping[str, Any]) -> str:
    """``data`` (a flat object of JSON scalars) as PostgreSQL prints ``jsonb``.

    Keys are ordered by UTF-8 length, then byte by byte; items are joined by
    ``", "`` and ``": "``; numbers are printed as ``numeric`` prints them.
    """
    items = sorted(data.items(), key=lambda item: _key_order(item[0]))
    inner = ", ".join(f"{_string(k)}: {_scalar(v)}" for k, v in items)
    return "{" + inner + "}"


def _key_order(key: str) -> tuple[int, bytes]:
    raw = key.encode()
    return len(raw), raw


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        return numeric_text(value)
    raise TypeError(f"value {str(value)[:40]!r}: expected a JSON scalar")


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        escaped = _ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def numeric_text(value: float | Decimal) -> str:
    """A JSON number as ``numeric`` prints it after reading its JSON text.

    Python writes a float by its shortest repr (``1e-07``, ``1.5e+300``);
    ``numeric`` reads that with display scale ``max(0, decimals - exponent)``
    and prints it in plain notation with exactly that many decimals.
    Negative zero has no sign in ``numeric``.
    """
    if isinstance(value, float):
        value = Decimal(json.dumps(value))
    _sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"number {value!r}: expected a finite number")
    scale = max(0, -exponent)
    text = f"{value:.{scale}f}"
    if not any(digits):
        text = text.lstrip("-")
    return text


def compact(value: Any) -> str:
    """JSON with sorted keys and no blanks, Unicode kept (how r rows are stored)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
