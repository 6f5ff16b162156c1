"""Text and binary-string fields in their CCSIDs (domain brief §4.2, §5).

Single-byte EBCDIC CCSIDs are decoded through a 256-entry table built once
per CCSID from Python's codec (stdlib, or the ``ebcdic`` package for the pages
the stdlib lacks) and then corrected where that codec differs from IBM's own
conversion table, which JT400 carries (tests/test_jt400_differential.py checks
all 256 bytes of every CCSID below against it):

- byte 0x15 is NEL (U+0085) in every EBCDIC page; the ``ebcdic`` package
  reads it as LF, which would make it the same character as 0x25;
- CCSID 273 byte 0xBC is the macron U+00AF in IBM's table; Python's cp273
  says U+203E (overline).

Invariants: a table decodes every byte (no decode error is possible for a
single-byte page); CHAR loses trailing blanks (U+0020) and keeps everything
else; a varying-length field is never read past its length prefix, and a
prefix above the declared maximum is a field error; CCSID 65535 (FOR BIT
DATA), BINARY and VARBINARY give upper-case hex unless an override names a
CCSID to read them with.
"""

from __future__ import annotations

import codecs
from functools import cache

import ebcdic  # noqa: F401  (registers cp277, cp297, cp1147... on import)

from appliance.decoding.numbers import FieldError, FieldFn

HEX_CCSID = 65535
SINGLE_BYTE = (
    37, 273, 277, 278, 280, 284, 285, 297, 500, 871,
    *range(1140, 1150),
)  # fmt: skip
UNICODE = {1208: "utf-8", 1200: "utf-16-be", 13488: "utf-16-be"}
# The stdlib's pages already read 0x15 as NEL; setting it again is harmless.
_NEL_FIX = {0x15: "\x85"}
_FIXES: dict[int, dict[int, str]] = {273: {0xBC: "\xaf"}}


@cache
def decoding_table(ccsid: int) -> str:
    """The 256 characters of a single-byte CCSID, IBM's reading of each byte."""
    name = f"cp{ccsid:03d}"
    chars = list(bytes(range(256)).decode(name))
    for byte, char in {**_NEL_FIX, **_FIXES.get(ccsid, {})}.items():
        chars[byte] = char
    return "".join(chars)


def text_codec(ccsid: int | None) -> str | int | None:
    """How to read a CCSID: a Unicode codec name, a single-byte CCSID, or None (hex).

    LookupError for a CCSID this box cannot decode.
    """
    if ccsid is None or ccsid in (0, HEX_CCSID):
        return None
    if ccsid in UNICODE:
        return UNICODE[ccsid]
    decoding_table(ccsid)  # LookupError for an unknown page
    return ccsid


def _reader(codec: str | int) -> FieldFn:
    """bytes -> str for a Unicode codec name or a single-byte CCSID."""
    if isinstance(codec, int):
        table = decoding_table(codec)

        def single_byte(raw: bytes) -> str:
            return codecs.charmap_decode(raw, "strict", table)[0]

        return single_byte

    def unicode(raw: bytes) -> str:
        try:
            return raw.decode(codec)
        except UnicodeDecodeError as exc:
            raise FieldError(f"invalid {codec} at byte {exc.start}", codec) from None

    return unicode


def hex_text(raw: bytes) -> str:
    """Opaque bytes (FOR BIT DATA, BINARY) as upper-case hex."""
    return raw.hex().upper()


def fixed_text(codec: str | int | None) -> FieldFn:
    """CHAR/GRAPHIC: decoded, trailing blanks removed; hex without a codec."""
    if codec is None:
        return hex_text
    read = _reader(codec)

    def decode(raw: bytes) -> str:
        return str(read(raw)).rstrip(" ")

    return decode


def varying_text(maximum: int, unit: int, codec: str | int | None) -> FieldFn:
    """VARCHAR/VARGRAPHIC/VARBINARY: 2-byte length (in ``unit`` bytes), body."""
    read = hex_text if codec is None else _reader(codec)

    def decode(raw: bytes) -> str:
        length = (raw[0] << 8) | raw[1]
        if length > maximum:
            raise FieldError(
                f"varying length {length} exceeds declared maximum",
                f"length <= {maximum}",
            )
        return str(read(raw[2 : 2 + length * unit]))

    return decode


def refusing_nul(read: FieldFn) -> FieldFn:
    """``read``, but a text holding U+0000 is a field error.

    The codecs read x'00' faithfully as U+0000 (IBM's tables do too; RPG's
    ``*LOVAL`` fills a field with it), but PostgreSQL stores that character
    neither in text nor in jsonb, so such a value could never reach the ODH.
    Refused here, where the table, position, field and offset are known, it
    becomes an ordinary field error: the field is null in the change and its
    bytes travel in the change's ``errors``, so nothing is lost.
    """

    def decode(raw: bytes) -> str:
        value = str(read(raw))
        if "\x00" in value:
            raise FieldError(
                f"NUL character (U+0000) at character {value.index(chr(0))}",
                "text without x'00' (the ODH cannot store U+0000)",
            )
        return value

    return decode
