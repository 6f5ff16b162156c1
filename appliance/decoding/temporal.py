"""DATE, TIME and TIMESTAMP fields: EBCDIC characters in their formats (§4.3).

Invariants:

- a date is read in its column's DATFMT; the separator is the catalog's
  DATSEP for *MDY *DMY *YMD *JUL and the format's own for *ISO *EUR *USA
  *JIS (a NULL separator means the format's default, never "none");
- two-digit years map into 1940-2039, as DB2 for i does;
- an impossible date or time (31 February, 25:00) is a field error;
- JSON values: ``YYYY-MM-DD``, ``HH:MM:SS`` (24:00:00 is DB2's end of day
  and is kept), ``YYYY-MM-DDTHH:MM:SS.ffffff`` with six fractional digits
  up to TIMESTAMP(6) and all ``p`` digits for TIMESTAMP(7..12), so no digit
  is ever dropped.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache

from appliance.decoding.numbers import FieldError, FieldFn

# Digits, separators, blank, 'A', 'M', 'P' are the same bytes in every page.
DATETIME_CODEC = "cp037"
DATE_TEMPLATES = {
    "ISO": "YYYY-MM-DD",
    "JIS": "YYYY-MM-DD",
    "EUR": "DD.MM.YYYY",
    "USA": "MM/DD/YYYY",
    "MDY": "MM/DD/YY",
    "DMY": "DD/MM/YY",
    "YMD": "YY/MM/DD",
    "JUL": "YY/DDD",
}
FREE_SEPARATOR_DATES = ("MDY", "DMY", "YMD", "JUL")
TIME_SEPARATORS = {"ISO": ".", "EUR": ".", "JIS": ":", "HMS": ":"}
_GROUPS = {"YYYY": "y", "YY": "y", "MM": "m", "DDD": "j", "DD": "d"}


def _template_pattern(template: str, separator: str) -> re.Pattern[str]:
    """'DD.MM.YYYY' -> a regex with groups d, m, y; punctuation -> separator."""
    parts = []
    for run in re.findall(r"Y+|M+|D+|[^YMD]", template):
        if run in _GROUPS:
            parts.append(f"(?P<{_GROUPS[run]}>[0-9]{{{len(run)}}})")
        else:
            parts.append(re.escape(separator or run))
    return re.compile("".join(parts))


def full_year(text: str) -> int:
    """A four-digit year; two digits map into 1940-2039."""
    year = int(text)
    if len(text) == 2:
        year += 2000 if year < 40 else 1900
    return year


def date_field(date_format: str, separator: str) -> FieldFn:
    """DATE in its DATFMT/DATSEP -> 'YYYY-MM-DD'."""
    template = DATE_TEMPLATES[date_format]
    if date_format not in FREE_SEPARATOR_DATES:
        separator = ""
    pattern = _template_pattern(template, separator)
    expected = f"*{date_format} date {template}"

    def decode(raw: bytes) -> str:
        match = pattern.fullmatch(raw.decode(DATETIME_CODEC))
        if match is None:
            raise FieldError("date does not match its format", expected)
        parts = match.groupdict()
        year = full_year(parts["y"])
        try:
            if "j" in parts:
                day = int(parts["j"])
                value = dt.date(year, 1, 1) + dt.timedelta(days=day - 1)
                if day < 1 or value.year != year:
                    raise ValueError(day)
            else:
                value = dt.date(year, int(parts["m"]), int(parts["d"]))
        except (ValueError, OverflowError):
            raise FieldError("impossible date", expected) from None
        return value.isoformat()

    return decode


def time_field(time_format: str, separator: str) -> FieldFn:
    """TIME in its TIMFMT (*ISO *EUR *JIS *HMS *USA) -> 'HH:MM:SS'."""
    if time_format == "USA":
        return _usa_time
    sep = TIME_SEPARATORS.get(time_format)
    if sep is None:
        raise ValueError(time_format)
    if time_format == "HMS" and separator:
        sep = separator
    escaped = re.escape(sep)
    pattern = re.compile(f"([0-9]{{2}}){escaped}([0-9]{{2}}){escaped}([0-9]{{2}})")
    expected = f"*{time_format} time hh{sep}mm{sep}ss"

    def decode(raw: bytes) -> str:
        match = pattern.fullmatch(raw.decode(DATETIME_CODEC))
        if match is None:
            raise FieldError("time does not match its format", expected)
        return _clock(*(int(g) for g in match.groups()), expected=expected)

    return decode


_USA_TIME = re.compile("([0-9]{2}):([0-9]{2}) ([AP]M)")


def _usa_time(raw: bytes) -> str:
    expected = "*USA time hh:mm AM"
    match = _USA_TIME.fullmatch(raw.decode(DATETIME_CODEC))
    if match is None:
        raise FieldError("time does not match its format", expected)
    hour, minute = int(match.group(1)), int(match.group(2))
    if not 1 <= hour <= 12 or minute > 59:
        raise FieldError("impossible time", expected)
    hour = hour % 12 + (12 if match.group(3) == "PM" else 0)
    return _clock(hour, minute, 0, expected=expected)


def _clock(hour: int, minute: int, second: int, *, expected: str) -> str:
    end_of_day = (hour, minute, second) == (24, 0, 0)
    if not end_of_day and (hour > 23 or minute > 59 or second > 59):
        raise FieldError("impossible time", expected)
    return f"{hour:02d}:{minute:02d}:{second:02d}"


def timestamp_field(precision: int) -> FieldFn:
    """TIMESTAMP(p) 'YYYY-MM-DD-HH.MM.SS[.f...]' -> 'YYYY-MM-DDTHH:MM:SS.ffffff'.

    Read at fixed positions: the image's shape (each EBCDIC digit as '9',
    every other byte as itself) must be the format's, which is what the
    format's regular expression over the decoded text accepts, since cp037
    gives '0'-'9' only for 0xF0-0xF9 and each punctuation mark for one byte.
    """
    template = "9999-99-99-99.99.99" + ("." + "9" * precision).rstrip(".")
    shape = template.encode(DATETIME_CODEC)
    expected = "timestamp YYYY-MM-DD-HH.MM.SS" + ("." + "f" * precision).rstrip(".")

    def decode(raw: bytes) -> str:
        if raw.translate(_SHAPES) != shape:
            raise FieldError("timestamp does not match its format", expected)
        text = raw.decode(DATETIME_CODEC)
        if (
            not _real_date(text[:10])
            or text[11:13] > "23"
            or text[14:16] > "59"
            or text[17:19] > "59"
        ):
            raise FieldError("impossible timestamp", expected)
        return (
            f"{text[:10]}T{text[11:13]}:{text[14:16]}:{text[17:19]}"
            f".{text[20:].ljust(6, '0')}"
        )

    return decode


# EBCDIC digits (0xF0-0xF9) -> the EBCDIC '9'; every other byte unchanged.
_SHAPES = bytes(0xF9 if 0xF0 <= b <= 0xF9 else b for b in range(256))


@lru_cache(maxsize=4096)  # the days of a journal are few: check each once
def _real_date(text: str) -> bool:
    """Whether 'YYYY-MM-DD' (digits) is a day of the calendar (year 1 or later)."""
    try:
        dt.date(int(text[:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        return False
    return True
