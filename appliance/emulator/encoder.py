"""Record images in EBCDIC, built with IBM's own JT400 converters.

The relay's decoder is pure Python; encoding the emulator's images with
JTOpen (``com.ibm.as400.access``, Debian's jt400.jar 9.4, through JPype) makes
sure the decoder is tested against IBM's reading of the formats, not against
its own inverse.

Converters used (all work offline, no AS400 system object needed):
``AS400Text(len, ccsid)``, ``AS400PackedDecimal(p, s)``,
``AS400ZonedDecimal(p, s)``, ``AS400Bin2/4/8``, ``AS400Date(tz, FORMAT_ISO)``,
``AS400Time(tz, FORMAT_ISO)``, ``AS400Timestamp(tz)``. Dates and times are
handed to Java as UTC instants and formatted in UTC, so the JVM's default
time zone never shifts a value.

Invariants:

- an image is exactly ``sum(column.storage)`` bytes, fields back to back;
- CHAR is blank-padded (0x40) in the column CCSID; VARCHAR is a big-endian
  2-byte length, the text, then zero bytes up to the declared length;
- a NULL field holds the type's default value and its null-map char is '1';
  the null map is empty when the table has no null-capable field;
- a character the column CCSID cannot represent is refused (SourceError),
  never written as the substitution byte 0x3F.

CCSIDs 1208/1200/13488 are Unicode and encoded with Python's codecs; a CCSID
JT400 cannot load offline falls back to the ``ebcdic`` codec of that name.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

import ebcdic  # noqa: F401  (registers cp297, cp1147... on import)

from appliance import jvm
from appliance.emulator.layout import Column
from appliance.errors import SourceError

logger = logging.getLogger(__name__)

ACCESS = "com.ibm.as400.access."
SUBSTITUTE = 0x3F
UNICODE = {1208: "utf-8", 1200: "utf-16-be", 13488: "utf-16-be"}
DEFAULTS: dict[str, Any] = {
    "CHAR": "",
    "VARCHAR": "",
    "DECIMAL": Decimal(0),
    "NUMERIC": Decimal(0),
    "SMALLINT": 0,
    "INTEGER": 0,
    "BIGINT": 0,
    "DATE": dt.date(2000, 1, 1),
    "TIME": dt.time(0, 0, 0),
    "TIMESTAMP": dt.datetime(2000, 1, 1),
}
Encode = Callable[[Any], bytes]


@cache
def _java() -> Any:
    """The JPype module with the JVM started (once per process)."""
    jvm.ensure_started()
    import jpype  # only after the JVM runs

    return jpype


@cache
def _cls(name: str) -> Any:
    return _java().JClass(name if "." in name else ACCESS + name)


@cache
def _utc() -> Any:
    return _cls("java.util.TimeZone").getTimeZone("UTC")


def _millis(value: dt.datetime) -> int:
    return calendar.timegm(value.timetuple()) * 1000


class RecordEncoder:
    """Turns a row (column name -> Python value) into (image, null map)."""

    def __init__(self, table: str, columns: Sequence[Column]) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.has_nulls = any(c.nullable for c in self.columns)
        self.length = sum(c.storage for c in self.columns)
        self._encoders = [field_encoder(c) for c in self.columns]

    def encode(self, row: Mapping[str, Any]) -> tuple[bytes, str]:
        """The record image and the null map ('' without null-capable fields)."""
        parts: list[bytes] = []
        nulls: list[str] = []
        for column, encode in zip(self.columns, self._encoders, strict=True):
            value = row.get(column.name)
            if value is None and not column.nullable:
                raise SourceError(
                    f"null in not-null field table={self.table} field={column.name}"
                )
            nulls.append("1" if value is None else "0")
            use = DEFAULTS[column.type] if value is None else value
            parts.append(self._field(column, encode, use))
        image = b"".join(parts)
        return image, "".join(nulls) if self.has_nulls else ""

    def _field(self, column: Column, encode: Encode, value: Any) -> bytes:
        try:
            data = encode(value)
        except SourceError as exc:
            raise SourceError(f"table={self.table} field={column.name}: {exc}") from exc
        except Exception as exc:  # JPype wraps Java exceptions of any kind
            raise SourceError(
                f"cannot encode table={self.table} field={column.name} "
                f"value={str(value)[:40]!r} expected {column.type}: {exc}"
            ) from exc
        if len(data) != column.storage:
            raise SourceError(
                f"encoder gave {len(data)} bytes table={self.table} "
                f"field={column.name} expected={column.storage}"
            )
        return data


def field_encoder(column: Column) -> Encode:
    """An encoder function for one column, converters built once."""
    kind = column.type
    if kind == "CHAR":
        return _char(column)
    if kind == "VARCHAR":
        return _varchar(column)
    if kind in ("DECIMAL", "NUMERIC"):
        return _decimal(column)
    if kind in ("SMALLINT", "INTEGER", "BIGINT"):
        return _binary(kind)
    return _datetime(kind)


def _text_converter(length: int, ccsid: int) -> Callable[[str], bytes]:
    """JT400 AS400Text, or the ``ebcdic`` codec when JT400 lacks the CCSID."""
    if ccsid in UNICODE:
        codec = UNICODE[ccsid]
        pad = " ".encode(codec)
        return lambda text: _pad(text.encode(codec), length, pad)
    try:
        converter = _cls("AS400Text")(length, ccsid)
        converter.toBytes("A")
    except Exception:  # JPype: the Java side refused the CCSID
        codec = f"cp{ccsid}"
        logger.warning("jt400 lacks ccsid, using python codec ccsid=%d", ccsid)
        return lambda text: _pad(text.encode(codec), length, b"\x40")
    return lambda text: _checked(text, bytes(converter.toBytes(text)), ccsid)


def _pad(data: bytes, length: int, pad: bytes) -> bytes:
    if len(data) > length:
        raise SourceError(f"text of {len(data)} bytes, expected at most {length}")
    return data + pad * ((length - len(data)) // len(pad))


def _checked(text: str, data: bytes, ccsid: int) -> bytes:
    if SUBSTITUTE in data and "\x1a" not in text:
        bad = [ch for ch in text if not _encodable(ch, ccsid)]
        raise SourceError(
            f"characters {''.join(bad)[:10]!r} not representable in ccsid {ccsid}"
        )
    return data


def _encodable(char: str, ccsid: int) -> bool:
    try:
        char.encode(f"cp{ccsid}")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _char(column: Column) -> Encode:
    convert = _text_converter(column.length, column.ccsid)

    def encode(value: Any) -> bytes:
        text = str(value)
        if len(text.rstrip(" ")) > column.length:
            raise SourceError(f"{len(text)} chars, expected at most {column.length}")
        return convert(text[: column.length])

    return encode


def _varchar(column: Column) -> Encode:
    convert = _text_converter(column.length, column.ccsid)
    unicode = column.ccsid in UNICODE

    def encode(value: Any) -> bytes:
        text = str(value)
        if len(text) > column.length:
            raise SourceError(f"{len(text)} chars, expected at most {column.length}")
        full = convert(text)
        used = len(text.encode(UNICODE[column.ccsid])) if unicode else len(text)
        unused = b"\x00" * (column.length - used)
        return used.to_bytes(2, "big") + full[:used] + unused

    return encode


def _decimal(column: Column) -> Encode:
    name = "AS400PackedDecimal" if column.type == "DECIMAL" else "AS400ZonedDecimal"
    converter = _cls(name)(column.length, column.scale)
    big_decimal = _cls("java.math.BigDecimal")
    quantum = Decimal(1).scaleb(-column.scale)
    limit = Decimal(10) ** (column.length - column.scale)

    def encode(value: Any) -> bytes:
        if isinstance(value, float):
            raise SourceError(f"float {value!r} given, expected an exact decimal")
        try:
            exact = Decimal(value).quantize(quantum)
        except InvalidOperation as exc:
            raise SourceError(f"value {str(value)[:30]!r} is no decimal") from exc
        if exact != Decimal(value) or abs(exact) >= limit:
            raise SourceError(
                f"value {value} does not fit {column.type}"
                f"({column.length},{column.scale})"
            )
        return bytes(converter.toBytes(big_decimal(f"{exact:f}")))

    return encode


def _binary(kind: str) -> Encode:
    jpype = _java()
    name, box = {
        "SMALLINT": ("AS400Bin2", jpype.JShort),
        "INTEGER": ("AS400Bin4", jpype.JInt),
        "BIGINT": ("AS400Bin8", jpype.JLong),
    }[kind]
    converter = _cls(name)()
    bits = converter.getByteLength() * 8
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def encode(value: Any) -> bytes:
        if isinstance(value, bool) or int(value) != value or not low <= value <= high:
            raise SourceError(f"value {value!r} out of {kind} range")
        return bytes(converter.toBytes(box(int(value))))

    return encode


def _datetime(kind: str) -> Encode:
    if kind == "DATE":
        date = _cls("AS400Date")(_utc(), _cls("AS400Date").FORMAT_ISO)
        sql_date = _cls("java.sql.Date")
        return lambda v: bytes(date.toBytes(sql_date(_millis(_dt(v)))))
    if kind == "TIME":
        time = _cls("AS400Time")(_utc(), _cls("AS400Time").FORMAT_ISO)
        sql_time = _cls("java.sql.Time")
        return lambda v: bytes(time.toBytes(sql_time(_millis(_dt(v)))))
    stamp = _cls("AS400Timestamp")(_utc())
    sql_stamp = _cls("java.sql.Timestamp")

    def encode(value: Any) -> bytes:
        moment = _dt(value)
        java = sql_stamp(_millis(moment))
        java.setNanos(moment.microsecond * 1000)
        return bytes(stamp.toBytes(java))

    return encode


def _dt(value: Any) -> dt.datetime:
    """Date, time or timestamp as a naive datetime (dates at midnight)."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime.combine(value, dt.time())
    elif isinstance(value, dt.time):
        moment = dt.datetime.combine(dt.date(1970, 1, 1), value)
    else:
        moment = dt.datetime.fromisoformat(str(value))
    if moment.year < 1600:
        # java.util.GregorianCalendar switches to Julian before 1582.
        raise SourceError(f"year {moment.year} not supported, expected >= 1600")
    return moment.replace(tzinfo=None)
