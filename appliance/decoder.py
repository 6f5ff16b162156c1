"""Decode journal record images into JSON values, one field at a time.

A :class:`RecordDecoder` is compiled once per layout: for every column it
keeps ``(name, start, end, function)``, so decoding a record is one loop of
slices and calls with no branching on the type. Values follow contracts §2:
CHAR/GRAPHIC lose trailing blanks, VARCHAR is kept as stored, DECIMAL/NUMERIC
(and binary integers with a scale) are strings with exactly ``scale``
decimals, integers are ints, DATE/TIME/TIMESTAMP are ISO text.

Invariants (domain brief §4.6, §4.8):

- an image whose length is not the record length is refused whole;
- a field flagged null in the null map (``byte & 0x0F == 1``, which holds
  for ``'1'`` and ``0xF1``) is never decoded; ``9`` (not recorded, a
  minimized entry) refuses the image;
- a VARCHAR is never read past its length prefix, and a prefix above the
  declared maximum is an error;
- packed and zoned digits are 0-9; signs A C E F are positive, B D negative;
  ``-0`` is written ``0``; all-blank (0x40) numerics are an error for now;
- dates, times and timestamps must parse in their catalog format; two-digit
  years map to 1940-2039.

Every refusal is a :class:`DecodeError` naming the table, position, field,
byte offset, the field's bytes and what was expected. Text is decoded with
the column's CCSID (§5.2), or with an override from ``ibmi.ccsid_overrides``
(``TABLE.COLUMN`` or ``TABLE.*``); CCSID 65535 without override gives hex.
"""

from __future__ import annotations

import codecs
import datetime as dt
import logging
import math
import re
import struct
from collections.abc import Callable, Mapping, Sequence

import ebcdic  # noqa: F401  (registers cp297, cp1147, cp1148 on import)

from appliance.errors import DecodeError
from appliance.layouts import Column, Layout

logger = logging.getLogger(__name__)

JsonValue = str | int | float | None
FieldFn = Callable[[bytes], JsonValue]

CCSID_CODECS = {
    37: "cp037",
    1140: "cp1140",
    500: "cp500",
    1148: "cp1148",
    297: "cp297",
    1147: "cp1147",
    1208: "utf-8",
    1200: "utf-16-be",
    13488: "utf-16-be",
}
HEX_CCSID = 65535
# Digits, separators, 'A', 'M', 'P' are the same bytes in every EBCDIC SBCS page.
_DATETIME_CODEC = "cp037"
_BLANK = 0x40
_DATE_TEMPLATES = {
    "ISO": "YYYY-MM-DD",
    "JIS": "YYYY-MM-DD",
    "EUR": "DD.MM.YYYY",
    "USA": "MM/DD/YYYY",
    "MDY": "MM/DD/YY",
    "DMY": "DD/MM/YY",
    "YMD": "YY/MM/DD",
    "JUL": "YY/DDD",
}
_DATE_FREE_SEPARATOR = ("MDY", "DMY", "YMD", "JUL")
_TIME_SEPARATORS = {"ISO": ".:", "EUR": ".", "JIS": ":", "HMS": ":"}
_GROUPS = {"YYYY": "y", "YY": "y", "MM": "m", "DDD": "j", "DD": "d"}


class FieldError(ValueError):
    """One field's bytes are not a valid value; the decoder adds the context."""

    def __init__(self, reason: str, expected: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expected = expected


def codec_for(ccsid: int | None) -> str | None:
    """Python codec for a CCSID; None means 'show as hex' (65535 or unknown)."""
    if ccsid is None or ccsid in (0, HEX_CCSID):
        return None
    name = CCSID_CODECS.get(ccsid, f"cp{ccsid}")
    codecs.lookup(name)  # LookupError for a CCSID this box cannot decode
    return name


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


def _sign(nibble: str, raw: bytes, kind: str) -> bool:
    """True for a negative sign nibble; FieldError for an invalid one."""
    if nibble in "bd":
        return True
    if nibble in "acef":
        return False
    if raw and raw.count(_BLANK) == len(raw):
        raise FieldError(
            f"legacy blank {kind} decimal (all 0x40)", f"a {kind} decimal value"
        )
    raise FieldError(f"invalid {kind} sign nibble", "sign nibble A-F")


def packed(precision: int, scale: int) -> FieldFn:
    """DECIMAL(p,s): BCD, two digits a byte, sign in the last low nibble."""
    padded = precision % 2 == 0

    def decode(raw: bytes) -> str:
        text = raw.hex()
        digits, sign = text[:-1], text[-1]
        if not digits.isdigit():
            _sign(sign, raw, "packed")
            raise FieldError("invalid packed digit nibble", "digit nibbles 0-9")
        negative = _sign(sign, raw, "packed")
        if padded and digits[0] != "0":
            raise FieldError("packed value exceeds precision", "pad nibble 0")
        return scaled(digits, scale, negative)

    return decode


def zoned(scale: int) -> FieldFn:
    """NUMERIC(p,s): one digit a byte (F0-F9), sign in the last zone nibble."""

    def decode(raw: bytes) -> str:
        text = raw.hex()
        zones, digits = text[0::2], text[1::2]
        negative = _sign(zones[-1], raw, "zoned")
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
    """REAL/DOUBLE, IEEE-754 big-endian; NaN and infinities are refused."""
    fmt = ">f" if size == 4 else ">d"

    def decode(raw: bytes) -> float:
        value: float = struct.unpack(fmt, raw)[0]
        if not math.isfinite(value):
            raise FieldError("non-finite float", "a finite IEEE-754 value")
        return value

    return decode


def _hex(raw: bytes) -> str:
    return raw.hex().upper()


def fixed_text(codec: str | None) -> FieldFn:
    """CHAR/GRAPHIC: decoded, trailing blanks removed; hex without a codec."""
    if codec is None:
        return _hex

    def decode(raw: bytes) -> str:
        return raw.decode(codec).rstrip(" ")

    return decode


def varying_text(maximum: int, unit: int, codec: str | None) -> FieldFn:
    """VARCHAR/VARGRAPHIC/VARBINARY: 2-byte length (in ``unit`` bytes), body."""

    def decode(raw: bytes) -> str:
        length = (raw[0] << 8) | raw[1]
        if length > maximum:
            raise FieldError(
                f"varying length {length} exceeds declared maximum",
                f"length <= {maximum}",
            )
        body = raw[2 : 2 + length * unit]
        return body.decode(codec) if codec else body.hex().upper()

    return decode


def _template_pattern(template: str, separator: str) -> re.Pattern[str]:
    """'DD.MM.YYYY' -> a regex with groups d, m, y; punctuation -> separator."""
    parts = []
    for run in re.findall(r"Y+|M+|D+|[^YMD]", template):
        if run in _GROUPS:
            parts.append(f"(?P<{_GROUPS[run]}>[0-9]{{{len(run)}}})")
        else:
            parts.append(re.escape(separator or run))
    return re.compile("".join(parts))


def _full_year(text: str) -> int:
    year = int(text)
    if len(text) == 2:
        year += 2000 if year < 40 else 1900
    return year


def date_field(date_format: str, separator: str) -> FieldFn:
    """DATE in its DATFMT/DATSEP; the separator is the default when empty."""
    template = _DATE_TEMPLATES[date_format]
    if date_format not in _DATE_FREE_SEPARATOR:
        separator = ""
    pattern = _template_pattern(template, separator)
    expected = f"*{date_format} date {template}"

    def decode(raw: bytes) -> str:
        match = pattern.fullmatch(raw.decode(_DATETIME_CODEC))
        if match is None:
            raise FieldError("date does not match its format", expected)
        parts = match.groupdict()
        year = _full_year(parts["y"])
        try:
            if "j" in parts:
                day = int(parts["j"])
                if not 1 <= day <= 366:
                    raise ValueError(day)
                value = dt.date(year, 1, 1) + dt.timedelta(days=day - 1)
                if value.year != year:
                    raise ValueError(day)
            else:
                value = dt.date(year, int(parts["m"]), int(parts["d"]))
        except ValueError:
            raise FieldError("invalid date", expected) from None
        return value.isoformat()

    return decode


def time_field(time_format: str, separator: str) -> FieldFn:
    """TIME in its TIMFMT (*ISO *EUR *JIS *HMS *USA) -> 'HH:MM:SS'."""
    if time_format == "USA":
        return _usa_time
    allowed = _TIME_SEPARATORS.get(time_format)
    if allowed is None:
        raise ValueError(time_format)
    if time_format == "HMS" and separator:
        allowed = separator
    sep = "[" + re.escape(allowed) + "]"
    pattern = re.compile(f"([0-9]{{2}}){sep}([0-9]{{2}}){sep}([0-9]{{2}})")
    expected = f"*{time_format} time hh{allowed[0]}mm{allowed[0]}ss"

    def decode(raw: bytes) -> str:
        match = pattern.fullmatch(raw.decode(_DATETIME_CODEC))
        if match is None:
            raise FieldError("time does not match its format", expected)
        return _clock(*(int(g) for g in match.groups()), expected=expected)

    return decode


_USA_TIME = re.compile("([0-9]{2}):([0-9]{2}) ([AP]M)")


def _usa_time(raw: bytes) -> str:
    expected = "*USA time hh:mm AM"
    match = _USA_TIME.fullmatch(raw.decode(_DATETIME_CODEC))
    if match is None or not 0 <= int(match.group(1)) <= 12:
        raise FieldError("time does not match its format", expected)
    hour = int(match.group(1)) % 12 + (12 if match.group(3) == "PM" else 0)
    return _clock(hour, int(match.group(2)), 0, expected=expected)


def _clock(hour: int, minute: int, second: int, *, expected: str) -> str:
    midnight_end = (hour, minute, second) == (24, 0, 0)
    if not midnight_end and (hour > 23 or minute > 59 or second > 59):
        raise FieldError("invalid time", expected)
    return f"{hour:02d}:{minute:02d}:{second:02d}"


def timestamp_field(precision: int) -> FieldFn:
    """TIMESTAMP(p) 'YYYY-MM-DD-HH.MM.SS[.f...]' -> 'YYYY-MM-DDTHH:MM:SS.ffffff'."""
    fraction = f"\\.([0-9]{{{precision}}})" if precision else "()"
    pattern = re.compile(
        "([0-9]{4})-([0-9]{2})-([0-9]{2})-([0-9]{2})\\.([0-9]{2})\\.([0-9]{2})"
        + fraction
    )
    expected = "timestamp YYYY-MM-DD-HH.MM.SS" + ("." + "f" * precision).rstrip(".")

    def decode(raw: bytes) -> str:
        match = pattern.fullmatch(raw.decode(_DATETIME_CODEC))
        if match is None:
            raise FieldError("timestamp does not match its format", expected)
        year, month, day, hour, minute, second, digits = match.groups()
        try:
            value = dt.datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(second)
            )
        except ValueError:
            raise FieldError("invalid timestamp", expected) from None
        return value.isoformat() + "." + digits.ljust(6, "0")

    return decode


def field_decoder(column: Column, ccsid: int | None) -> FieldFn:
    """The decode function of one column; ValueError/LookupError if unsupported."""
    kind, length, scale = column.data_type, column.length, column.scale or 0
    if kind == "CHAR":
        return fixed_text(codec_for(ccsid))
    if kind == "VARCHAR":
        return varying_text(length, 1, codec_for(ccsid))
    if kind in ("GRAPHIC", "VARG"):
        codec = codec_for(ccsid)
        if codec != "utf-16-be":
            raise LookupError(f"graphic CCSID {ccsid}")
        if kind == "GRAPHIC":
            return fixed_text(codec)
        return varying_text(length, 2, codec)
    if kind == "BINARY":
        return _hex
    if kind == "VARBIN":
        return varying_text(length, 1, None)
    if kind == "DECIMAL":
        return packed(length, scale)
    if kind == "NUMERIC":
        return zoned(scale)
    if kind in ("SMALLINT", "INTEGER", "BIGINT"):
        return binary(scale)
    if kind == "FLOAT":
        return floating(column.size)
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
    """A layout compiled into a decode plan; :meth:`decode` turns images to dicts."""

    def __init__(
        self, layout: Layout, overrides: Mapping[str, int] | None = None
    ) -> None:
        self.layout = layout
        self.table = layout.sql_name
        plan: list[tuple[str, int, int, FieldFn]] = []
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
            plan.append(
                (column.name, column.offset, column.offset + column.size, function)
            )
        self._plan = tuple(plan)

    def decode(
        self,
        image: bytes,
        null_map: bytes | str | None = None,
        *,
        position: str = "",
    ) -> dict[str, JsonValue]:
        """Column name -> JSON value; DecodeError on the first bad field."""
        if len(image) != self.layout.record_length:
            raise self._length_error(image, position)
        flags = self._null_flags(null_map, position)
        out: dict[str, JsonValue] = {}
        name, start, end = "", 0, 0
        try:
            if flags is None:
                for name, start, end, function in self._plan:
                    out[name] = function(image[start:end])
            else:
                for (name, start, end, function), null in zip(
                    self._plan, flags, strict=True
                ):
                    out[name] = None if null else function(image[start:end])
        except ValueError as exc:
            raise self._field_error(
                exc, name, start, image[start:end], position
            ) from exc
        return out

    def _field_error(
        self, exc: ValueError, name: str, start: int, data: bytes, position: str
    ) -> DecodeError:
        if isinstance(exc, FieldError):
            reason, expected = exc.reason, exc.expected
        else:
            column = self.layout.column(name)
            reason = f"invalid {column.data_type}: {str(exc)[:80]}"
            expected = f"valid {column.data_type} bytes"
        return DecodeError(
            reason,
            table=self.table,
            position=position,
            field=name,
            offset=start,
            data=data,
            expected=expected,
        )

    def _length_error(self, image: bytes, position: str) -> DecodeError:
        got, want = len(image), self.layout.record_length
        field, offset, data = "(end of record)", want, image[want:]
        if got < want:
            for column in self.layout.columns:
                if column.offset + column.size > got:
                    field, offset = column.name, column.offset
                    data = image[column.offset :]
                    break
        return DecodeError(
            "image length differs from record length",
            table=self.table,
            position=position,
            field=field,
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
                "field not recorded (minimized entry)",
                table=self.table,
                position=position,
                field=column.name,
                offset=column.offset,
                data=bytes(null_map),
                expected="full images (MINENTDTA *NONE)",
            )
        if 1 not in low:
            return None
        return [value == 1 for value in low]


def compile_layout(
    layout: Layout, overrides: Mapping[str, int] | None = None
) -> RecordDecoder:
    """Compile ``layout`` once; reuse the decoder for every image of the table."""
    return RecordDecoder(layout, overrides)
