"""Decode journal record images into JSON values, one field at a time.

A :class:`RecordDecoder` is compiled once per layout: for every column it
keeps ``(name, start, end, function, memo)``, so decoding a record is one loop
of slices and calls with no branching on the type. The field functions live in
:mod:`appliance.decoding`; what each type becomes in JSON is in
docs/fidelity-decoding.md (contracts §2 is the short form).

``memo`` remembers, per column, the values of the last bytes it decoded
(at most ``MEMO_MAX``, then it starts again): a field function is a pure
function of its bytes and its values are immutable, and the same bytes come
back often (an update's before and after images, dates, codes, prices), so a
dictionary look-up replaces a regular expression or a codec call. Only values
are remembered, never a refusal: bad bytes are read again and described
again. Plain binary integers are cheaper to read than to look up and have no
memo.

Invariants (domain brief §4.6-§4.8):

- an image whose length is not the record length is refused whole
  (:class:`DecodeError`), never decoded: a wrong layout shifts every field;
- a null map of the wrong length, or holding ``9`` (not recorded: a
  minimized entry), refuses the whole image too;
- a field flagged null (``byte & 0x0F == 1``, true of ``'1'`` and ``0xF1``)
  is never decoded, its bytes are unspecified; on a column that is not
  null-capable (DB2 for i never flags one) the flag marks a damaged entry:
  the field is null and described in :attr:`Decoded.errors` (the
  transformer parks a change whose key field is in error);
- a field whose bytes are not a valid value (a bad nibble, 31 February, a
  VARCHAR prefix past its maximum) is null in the result and described in
  :attr:`Decoded.errors`; the other fields are decoded as usual, so one bad
  field never loses a row;
- an all-blank (0x40) packed or zoned field is null and named in
  :attr:`Decoded.blanks` (a legacy uninitialised numeric, not an error);
- a text field whose characters include U+0000 (x'00' in an EBCDIC CHAR)
  is a field error (:func:`appliance.decoding.text.refusing_nul`): the ODH
  cannot store that character, and here its position is known.

Text is decoded with the column's CCSID, or with an override from
``ibmi.ccsid_overrides`` (``TABLE.COLUMN``, then ``TABLE.*``; either name of
table or column); CCSID 65535 without an override gives hex.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.decoding.numbers import (
    BlankField,
    FieldError,
    FieldFn,
    JsonValue,
    binary,
    floating,
    packed,
    scaled,
    zoned,
)
from appliance.decoding.temporal import date_field, time_field, timestamp_field
from appliance.decoding.text import (
    HEX_CCSID,
    fixed_text,
    hex_text,
    refusing_nul,
    text_codec,
    varying_text,
)
from appliance.errors import DecodeError
from appliance.layouts import Column, Layout

logger = logging.getLogger(__name__)

# Distinct byte strings remembered per column before its memo is emptied.
MEMO_MAX = 512
# Types whose reading costs less than a look-up: no memo.
_UNMEMOIZED = frozenset({"SMALLINT", "INTEGER", "BIGINT", "BINARY"})
# Types read as text through a codec: U+0000 in them is a field error.
_TEXT_TYPES = frozenset({"CHAR", "VARCHAR", "GRAPHIC", "VARG"})

__all__ = [
    "HEX_CCSID",
    "BlankField",
    "Decoded",
    "FieldError",
    "JsonValue",
    "RecordDecoder",
    "compile_layout",
    "field_decoder",
    "override_ccsid",
    "scaled",
]

Image = dict[str, JsonValue]
# One field of a decode plan: name, start, end, function (None: read as
# null), memo of its values by bytes (None: not remembered).
_Step = tuple[str, int, int, FieldFn | None, dict[bytes, JsonValue] | None]
# What a memo answers for bytes it does not hold (a value may be None).
_UNSEEN: Any = object()


@dataclass(slots=True)
class Decoded:
    """One decoded image: values, field-level errors, blank numerics."""

    values: Image
    errors: list[dict[str, Any]] = field(default_factory=list)
    blanks: list[str] = field(default_factory=list)


def field_decoder(column: Column, ccsid: int | None) -> FieldFn:
    """The decode function of one column; ValueError/LookupError if unsupported."""
    kind, length, scale = column.data_type, column.length, column.scale or 0
    if kind == "CHAR":
        return fixed_text(text_codec(ccsid))
    if kind == "VARCHAR":
        return varying_text(length, 1, text_codec(ccsid))
    if kind in ("GRAPHIC", "VARG"):
        codec = text_codec(ccsid)
        if codec != "utf-16-be":
            raise LookupError(f"graphic CCSID {ccsid}")
        if kind == "GRAPHIC":
            return fixed_text(codec)
        return varying_text(length, 2, codec)
    if kind == "BINARY":
        return hex_text
    if kind == "VARBIN":
        return varying_text(length, 1, None)
    if kind == "DECIMAL":
        return packed(length, scale)
    if kind == "NUMERIC":
        return zoned(scale)
    if kind in ("SMALLINT", "INTEGER", "BIGINT"):
        return binary(scale)
    if kind == "FLOAT":
        return floating(4 if column.length == 4 else 8)
    if kind == "DATE":
        return date_field(column.date_format, column.date_separator)
    if kind == "TIME":
        return time_field(column.time_format, column.time_separator)
    if kind == "TIMESTMP":
        return timestamp_field(column.timestamp_precision)
    raise ValueError(kind)


def override_ccsid(
    layout: Layout, column: Column, overrides: Mapping[str, int]
) -> int | None:
    """The CCSID to decode ``column`` with: TABLE.COLUMN, then TABLE.*, then catalog."""
    if not overrides:
        return column.ccsid
    upper = {key.upper(): value for key, value in overrides.items()}
    for name in (column.name, column.system_name, "*"):
        for table in (layout.table, layout.sql_name):
            value = upper.get(f"{table}.{name}".upper())
            if value is not None:
                return value
    return column.ccsid


class RecordDecoder:
    """A layout compiled into a decode plan; see the module docstring."""

    def __init__(
        self, layout: Layout, overrides: Mapping[str, int] | None = None
    ) -> None:
        self.layout = layout
        self.table = layout.sql_name
        self.hidden = tuple(c.name for c in layout.columns if c.hidden)
        plan: list[_Step] = []
        for column in layout.columns:
            ccsid = override_ccsid(layout, column, overrides or {})
            try:
                function = field_decoder(column, ccsid)
            except (ValueError, LookupError) as exc:
                raise DecodeError(
                    f"cannot decode {column.data_type} with CCSID {ccsid}: {exc}",
                    table=self.table,
                    field=column.name,
                    offset=column.offset,
                    expected="a supported type, format and CCSID",
                ) from exc
            if column.data_type in _TEXT_TYPES and text_codec(ccsid) is not None:
                function = refusing_nul(function)
            memo: dict[bytes, JsonValue] | None = None
            if column.data_type not in _UNMEMOIZED or column.scale:
                memo = {}
            end = column.offset + column.size
            plan.append((column.name, column.offset, end, function, memo))
        self._plan = tuple(plan)

    def decode(
        self,
        image: bytes,
        null_map: bytes | str | None = None,
        *,
        position: str = "",
    ) -> Image:
        """Column name -> value; DecodeError on the first bad field (strict)."""
        decoded = self.decode_record(image, null_map, position=position)
        if decoded.errors:
            error = decoded.errors[0]
            raise DecodeError(
                error["reason"],
                table=self.table,
                position=position,
                field=error["field"],
                offset=error["offset"],
                data=bytes.fromhex(error["bytes_hex"]),
                expected=error["expected"],
            )
        return decoded.values

    def decode_record(
        self,
        image: bytes,
        null_map: bytes | str | None = None,
        *,
        position: str = "",
    ) -> Decoded:
        """Values with field-level errors; DecodeError only for the whole image."""
        if len(image) != self.layout.record_length:
            raise self.length_error(image, position)
        flags = self._null_flags(null_map, position)
        decoded = Decoded({})
        out = decoded.values
        plan = self._plan if flags is None else self._flagged(flags)
        if flags is not None:
            self._flag_problems(decoded, flags, image, null_map)
        for name, start, end, function, memo in plan:
            if function is None:  # flagged null
                out[name] = None
                continue
            raw = image[start:end]
            if memo is not None:
                value = memo.get(raw, _UNSEEN)
                if value is not _UNSEEN:
                    out[name] = value
                    continue
            try:
                value = function(raw)
            except ValueError as exc:
                out[name] = None
                self._field_problem(decoded, exc, name, start, image)
                continue
            out[name] = value
            if memo is not None:
                if len(memo) >= MEMO_MAX:
                    memo.clear()
                memo[raw] = value
        return decoded

    def _flag_problems(
        self,
        decoded: Decoded,
        flags: Sequence[bool],
        image: bytes,
        null_map: bytes | str | None,
    ) -> None:
        """A field error for each column flagged null that cannot be null."""
        columns = self.layout.columns
        for index, (column, flag) in enumerate(zip(columns, flags, strict=True)):
            if not flag or column.nullable:
                continue
            indicator = _indicator(null_map, index)
            end = column.offset + column.size
            decoded.errors.append(
                {
                    "field": column.name,
                    "offset": column.offset,
                    "bytes_hex": image[column.offset : end].hex().upper(),
                    "reason": f"null indicator {indicator} on a column that is"
                    " not null-capable (a damaged entry)",
                    "expected": "indicator 0: the column is NOT NULL",
                }
            )

    def _flagged(self, flags: Sequence[bool]) -> list[_Step]:
        """The plan with the function of each field flagged null taken out."""
        return [
            (step[0], 0, 0, None, None) if flag else step
            for step, flag in zip(self._plan, flags, strict=True)
        ]

    def _field_problem(
        self, decoded: Decoded, exc: ValueError, name: str, start: int, image: bytes
    ) -> None:
        """Record a blank numeric or a field error; the field's value is null."""
        if isinstance(exc, BlankField):
            decoded.blanks.append(name)
            return
        column = self.layout.column(name)
        if isinstance(exc, FieldError):
            reason, expected = exc.reason, exc.expected
        else:  # a codec or int() refusal inside a field function
            reason = f"invalid {column.data_type}: {str(exc)[:80]}"
            expected = f"valid {column.data_type} bytes"
        decoded.errors.append(
            {
                "field": name,
                "offset": start,
                "bytes_hex": image[start : start + column.size].hex().upper(),
                "reason": reason,
                "expected": expected,
            }
        )

    def length_error(self, image: bytes, position: str) -> DecodeError:
        """The refusal of an image whose length is not the record length."""
        got, want = len(image), self.layout.record_length
        field_name, offset, data = "(end of record)", want, image[want:]
        if got < want:
            for column in self.layout.columns:
                if column.offset + column.size > got:
                    field_name, offset = column.name, column.offset
                    data = image[column.offset :]
                    break
        return DecodeError(
            "image length differs from record length",
            table=self.table,
            position=position,
            field=field_name,
            offset=offset,
            data=data,
            expected=f"{want} bytes, got {got}",
        )

    def _null_flags(
        self, null_map: bytes | str | None, position: str
    ) -> Sequence[bool] | None:
        """Per-field null flags, or None when no field is null (the fast path)."""
        if not null_map:
            return None
        if isinstance(null_map, str):
            null_map = null_map.encode("latin-1", errors="replace")
        if not null_map.strip(b" \x40"):
            return None
        columns = self.layout.columns
        if len(null_map) != len(columns):
            raise DecodeError(
                "null map length differs from field count",
                table=self.table,
                position=position,
                field="(null map)",
                data=bytes(null_map),
                expected=f"{len(columns)} indicators, got {len(null_map)}",
            )
        if not null_map.strip(b"0\xf0"):
            return None  # every field present: the common case, kept fast
        low = [byte & 0x0F for byte in null_map]
        if 9 in low:
            column = columns[low.index(9)]
            raise DecodeError(
                "field not recorded (minimized entry, null indicator 9)",
                table=self.table,
                position=position,
                field=column.name,
                offset=column.offset,
                data=bytes(null_map),
                expected="full images (journal MINENTDTA *NONE)",
            )
        if 1 not in low:
            return None
        return [value == 1 for value in low]


def _indicator(null_map: bytes | str | None, index: int) -> str:
    """The null indicator of field ``index`` as it came, in hex."""
    if isinstance(null_map, str):
        null_map = null_map.encode("latin-1", errors="replace")
    return f"x'{(null_map or b'')[index : index + 1].hex().upper()}'"


def compile_layout(
    layout: Layout, overrides: Mapping[str, int] | None = None
) -> RecordDecoder:
    """Compile ``layout`` once; reuse the decoder for every image of the table."""
    return RecordDecoder(layout, overrides)
