"""IBM's JT400 converters as an oracle, called in batches through JPype.

One JPype call per value costs about a microsecond; the differential test
checks millions of values, so every helper here crosses the boundary a few
times per batch: numbers, dates and timestamps go through ``AS400Array`` (one
``toBytes``/``toObject`` for the whole batch);
single-byte text is one ``AS400Text`` as long as the whole batch (one byte
is one character, so the batch's text splits back into fields exactly).
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Sequence
from functools import cache
from typing import Any

from appliance import jvm

ACCESS = "com.ibm.as400.access."
DATE_FORMATS = ("MDY", "DMY", "YMD", "JUL", "ISO", "USA", "EUR", "JIS")
TIME_FORMATS = ("HMS", "ISO", "USA", "EUR", "JIS")


@cache
def java() -> Any:
    """The JPype module with the process's JVM started."""
    jvm.ensure_started()
    import jpype

    return jpype


@cache
def cls(name: str) -> Any:
    return java().JClass(name if "." in name else ACCESS + name)


@cache
def utc() -> Any:
    return cls("java.util.TimeZone").getTimeZone("UTC")


def _objects(values: Sequence[Any]) -> Any:
    jpype = java()
    array = jpype.JArray(cls("java.lang.Object"))(len(values))
    for index, value in enumerate(values):
        array[index] = value
    return array


def _array_bytes(converter: Any, objects: Sequence[Any]) -> bytes:
    array = cls("AS400Array")(converter, len(objects))
    return bytes(array.toBytes(_objects(objects)))


def decimals_to_bytes(kind: str, precision: int, scale: int, texts: list[str]) -> bytes:
    """AS400PackedDecimal / AS400ZonedDecimal images of decimal strings."""
    converter = cls(kind)(precision, scale)
    big = cls("java.math.BigDecimal")
    return _array_bytes(converter, [big(text) for text in texts])


def decimals_from_bytes(
    kind: str, precision: int, scale: int, data: bytes
) -> list[str]:
    """JT400's own reading of packed/zoned images (plain decimal strings)."""
    converter = cls(kind)(precision, scale)
    count = len(data) // converter.getByteLength()
    array = cls("AS400Array")(converter, count)
    return [str(value.toPlainString()) for value in array.toObject(data)]


def primitives_to_bytes(kind: str, values: Sequence[int | float]) -> bytes:
    """AS400Bin2/4/8 and AS400Float4/8 images of a batch, boxed in an Object[]."""
    jpype = java()
    box, primitive = {
        "AS400Bin2": ("java.lang.Short", jpype.JShort),
        "AS400Bin4": ("java.lang.Integer", jpype.JInt),
        "AS400Bin8": ("java.lang.Long", jpype.JLong),
        "AS400Float4": ("java.lang.Float", jpype.JFloat),
        "AS400Float8": ("java.lang.Double", jpype.JDouble),
    }[kind]
    boxed = cls(box)
    return _array_bytes(cls(kind)(), [boxed(primitive(v)) for v in values])


def text_to_bytes(ccsid: int, text: str) -> bytes:
    """AS400Text of a whole batch's characters (single-byte CCSIDs)."""
    return bytes(cls("AS400Text")(len(text), ccsid).toBytes(text))


def text_from_bytes(ccsid: int, data: bytes) -> str:
    """JT400's reading of a whole batch's bytes (single-byte CCSIDs)."""
    return str(cls("AS400Text")(len(data), ccsid).toObject(data))


def _millis(moment: dt.datetime) -> int:
    return calendar.timegm(moment.timetuple()) * 1000


def dates_to_bytes(fmt: str, separator: str | None, dates: list[dt.date]) -> bytes:
    """AS400Date images; the converter and the values are both in UTC."""
    date = cls("AS400Date")
    code = getattr(date, f"FORMAT_{fmt}")
    if separator is None:
        converter = date(utc(), code)
    else:
        converter = date(utc(), code, cls("java.lang.Character")(separator))
    sql_date = cls("java.sql.Date")
    midnight = dt.time()
    objects = [sql_date(_millis(dt.datetime.combine(d, midnight))) for d in dates]
    return _array_bytes(converter, objects)


def times_to_bytes(fmt: str, separator: str | None, times: list[dt.time]) -> bytes:
    """AS400Time images of whole seconds."""
    time = cls("AS400Time")
    code = getattr(time, f"FORMAT_{fmt}")
    if separator is None:
        converter = time(utc(), code)
    else:
        converter = time(utc(), code, cls("java.lang.Character")(separator))
    sql_time = cls("java.sql.Time")
    epoch = dt.date(1970, 1, 1)
    objects = [sql_time(_millis(dt.datetime.combine(epoch, t))) for t in times]
    return _array_bytes(converter, objects)


def timestamps_to_bytes(moments: list[dt.datetime]) -> bytes:
    """AS400Timestamp images (26 bytes, microseconds: all JT400 9.4 knows)."""
    converter = cls("AS400Timestamp")(utc())
    sql_stamp = cls("java.sql.Timestamp")
    objects = []
    for moment in moments:
        stamp = sql_stamp(_millis(moment))
        stamp.setNanos(moment.microsecond * 1000)
        objects.append(stamp)
    return _array_bytes(converter, objects)
