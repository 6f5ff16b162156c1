"""Numeric fields: packed and zoned decimals, binary integers, IEEE floats.

Invariants (domain brief §4.2, §4.7, §4.8):

- packed and zoned digits are 0-9; sign nibbles A C E F are positive, B D
  negative, anything else is a :class:`FieldError`;
- ``-0`` is written ``0``: a value's text never starts with ``-`` unless a
  digit is non-zero;
- a decimal (and a binary integer with a scale) is a string with exactly
  ``scale`` decimals, never a float;
- a packed or zoned field of nothing but 0x40 (a legacy uninitialised
  numeric) raises :class:`BlankField`, which the record decoder turns into a
  null and a counted warning, not an error;
- REAL is the shortest decimal that reads back to the same 32 bits, DOUBLE
  the shortest that reads back to the same 64; NaN and infinities (which JSON
  cannot carry) are field errors.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

JsonValue = str | int | float | None
FieldFn = Callable[[bytes], JsonValue]

BLANK = 0x40


class FieldError(ValueError):
    """One field's bytes are not a valid value; the decoder adds the context."""

    def __init__(self, reason: str, expected: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expected = expected


class BlankField(FieldError):
    """A numeric field filled with EBCDIC blanks: null, counted, not an error."""


def is_blank(raw: bytes) -> bool:
    """True when every byte of ``raw`` is an EBCDIC blank (0x40)."""
    return bool(raw) and raw.count(BLANK) == len(raw)


def scaled(digits: str, scale: int, negative: bool) -> str:
    """Decimal text with exactly ``scale`` decimals from a digit string."""
    if scale:
        digits = digits.rjust(scale + 1, "0")
        text = (digits[:-scale].lstrip("0") or "0") + "." + digits[-scale:]
    else:
        text = digits.lstrip("0") or "0"
    if negative and digits.strip("0"):
        return "-" + text
    return text


def _negative(nibble: str, raw: bytes, kind: str) -> bool:
    """True for a negative sign nibble; FieldError (or BlankField) otherwise."""
    if nibble in "bd":
        return True
    if nibble in "acef":
        return False
    if is_blank(raw):
        raise BlankField(f"blank {kind} decimal (all 0x40)", f"a {kind} decimal")
    raise FieldError(f"invalid {kind} sign nibble {nibble.upper()}", "sign A-F")


def packed(precision: int, scale: int) -> FieldFn:
    """DECIMAL(p,s): BCD, two digits a byte, sign in the last low nibble."""
    padded = precision % 2 == 0

    def decode(raw: bytes) -> str:
        text = raw.hex()
        digits, sign = text[:-1], text[-1]
        negative = _negative(sign, raw, "packed")
        if not digits.isdigit():
            raise FieldError("invalid packed digit nibble", "digit nibbles 0-9")
        if padded and digits[0] != "0":
            # JT400 ignores this nibble; the record format says it is 0.
            raise FieldError("packed value exceeds precision", "pad nibble 0")
        return scaled(digits, scale, negative)

    return decode


def zoned(scale: int) -> FieldFn:
    """NUMERIC(p,s): one digit a byte (F0-F9), sign in the last zone nibble."""

    def decode(raw: bytes) -> str:
        text = raw.hex()
        zones, digits = text[0::2], text[1::2]
        negative = _negative(zones[-1], raw, "zoned")
        if not digits.isdigit():
            raise FieldError("invalid zoned digit nibble", "digit nibbles 0-9")
        if zones[:-1].strip("f"):
            raise FieldError("invalid zoned zone nibble", "zone F on all but last")
        return scaled(digits, scale, negative)

    return decode


def binary(scale: int) -> FieldFn:
    """SMALLINT/INTEGER/BIGINT, big-endian two's complement, with a scale."""
    if not scale:
        return _plain_int

    def decode(raw: bytes) -> str:
        value = int.from_bytes(raw, "big", signed=True)
        return scaled(str(abs(value)), scale, value < 0)

    return decode


def _plain_int(raw: bytes) -> int:
    return int.from_bytes(raw, "big", signed=True)


def floating(size: int) -> FieldFn:
    """REAL (4 bytes) / DOUBLE (8 bytes), IEEE-754 big-endian, as JSON numbers."""
    return _real if size == 4 else _double


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise FieldError("non-finite float", "a finite IEEE-754 value")
    return value


def _double(raw: bytes) -> float:
    value: float = struct.unpack(">d", raw)[0]
    return _finite(value)  # repr() of a float is already the shortest round trip


def _real(raw: bytes) -> float:
    """The shortest decimal whose float32 is exactly these 4 bytes."""
    value: float = _finite(struct.unpack(">f", raw)[0])
    for digits in range(1, 10):  # 9 significant digits always suffice
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.pack(">f", candidate) == raw:
                return candidate
        except OverflowError:  # rounded past the float32 maximum
            continue
    return value
