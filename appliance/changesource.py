"""The ``source`` block of a change: where in the journal it was, and when.

Every change the transformer writes carries ``source`` (journal, receiver,
sequence, commit cycle, library, table, RRN, entry time), ``entry_ts_ms`` and
``mined_at`` (contracts §2). Invariants:

- ``entry_ts`` is the journal's text as mined (local time of
  ``store.timezone``); ``entry_ts_utc`` is that time in UTC, written
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; in the repeated hour of a DST fall-back
  the first occurrence is meant (fold=0);
- ``entry_ts_ms`` is milliseconds since 1970-01-01 UTC, rounded down;
- an entry time that does not parse is a :class:`DecodeError` naming the
  field ``entry_ts`` (the caller parks the entry);
- ``hidden_columns`` is there only when the layout has hidden columns.

The legs read journal entries as :data:`Entry` dicts (:func:`new_entries`):
the transformer reads some thirty columns of each, and a dict finds a
column several times faster than ``Entry``, which compares names.

The UTC text and milliseconds of an entry time depend on nothing but its
text and the zone, and the entries of one transaction share their time: the
last ``MEMO_MAX`` conversions are remembered. An entry time written
``YYYY-MM-DDTHH:MM:SS.ffffff`` is converted through its whole second (also
remembered): a zone's offsets and transitions are whole seconds, so every
microsecond of a local second has the offset of that second, and the
fraction is carried over as written.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from appliance.decoder import RecordDecoder
from appliance.errors import DecodeError

# Entry times whose conversion is remembered before the memo is emptied.
MEMO_MAX = 1024
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)

# One ``raw_entries`` row: column name -> value.
Entry = Mapping[str, Any]


def new_entries(conn: sqlite3.Connection, limit: int) -> list[Entry]:
    """The ``limit`` lowest-id entries with ``state = 0``, in id order, as dicts."""
    cursor = conn.cursor()
    cursor.row_factory = None
    cursor.execute(
        "SELECT * FROM raw_entries WHERE state = 0 ORDER BY id LIMIT ?", (limit,)
    )
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


class SourceBlock:
    """Makes the ``source`` of the changes of an entry, for one store zone."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._times: dict[str, tuple[str, int]] = {}
        # 'YYYY-MM-DDTHH:MM:SS' local -> (the same second in UTC, its epoch ms).
        self._seconds: dict[str, tuple[str, int] | None] = {}

    def __call__(self, row: Entry, decoder: RecordDecoder) -> dict[str, Any]:
        """``source``, ``entry_ts_ms`` and ``mined_at`` of a change made by ``row``."""
        layout = decoder.layout
        local_text = row["entry_ts"]
        utc_text, ms = self._times.get(local_text) or self._convert(row, decoder)
        source_info = {
            "journal": row["journal"],
            "receiver": row["receiver_name"],
            "receiver_library": row["receiver_library"],
            "sequence": row["sequence"],
            "commit_cycle": row["commit_cycle"],
            "library": layout.library,
            "table": layout.sql_name,
            "rrn": row["rrn"],
            "entry_ts": local_text,
            "entry_ts_utc": utc_text,
        }
        if decoder.hidden:
            source_info["hidden_columns"] = list(decoder.hidden)
        return {"source": source_info, "entry_ts_ms": ms, "mined_at": row["mined_at"]}

    def _convert(self, row: Entry, decoder: RecordDecoder) -> tuple[str, int]:
        """(UTC text, epoch milliseconds) of the row's entry time, remembered."""
        local_text = row["entry_ts"]
        converted = self._through_second(local_text)
        if converted is None:
            converted = self._parse(row, decoder)
        if len(self._times) >= MEMO_MAX:
            self._times.clear()
        self._times[local_text] = converted
        return converted

    def _through_second(self, local_text: object) -> tuple[str, int] | None:
        """The conversion of a plain six-digit entry time; None for any other."""
        if not isinstance(local_text, str) or len(local_text) != 26:
            return None
        digits = local_text[20:]
        if local_text[19] != "." or not (digits.isascii() and digits.isdigit()):
            return None
        second_text = local_text[:19]
        if second_text in self._seconds:
            second = self._seconds[second_text]
        else:
            second = self._second(second_text)
            if len(self._seconds) >= MEMO_MAX:
                self._seconds.clear()
            self._seconds[second_text] = second
        if second is None:
            return None
        return f"{second[0]}.{digits}Z", second[1] + int(digits) // 1000

    def _second(self, text: str) -> tuple[str, int] | None:
        """A plain local second in UTC (None: not plain, or before year 1000)."""
        plain = (
            text[4] + text[7] + text[10] + text[13] + text[16] == "--T::"
            and text[:4].isdigit()
            and (text[5:7] + text[8:10] + text[11:13] + text[14:16]).isdigit()
            and text[17:].isdigit()
            and text.isascii()
        )
        if not plain:
            return None
        try:
            local = dt.datetime.fromisoformat(text)
        except ValueError:
            return None  # _parse describes it
        utc = local.replace(tzinfo=self.zone).astimezone(dt.UTC)
        if utc.year < 1000:
            return None
        return utc.isoformat()[:19], (utc - _EPOCH) // _MILLISECOND

    def _parse(self, row: Entry, decoder: RecordDecoder) -> tuple[str, int]:
        """(UTC text, epoch milliseconds) of any entry time ``fromisoformat`` reads."""
        local_text = row["entry_ts"]
        try:
            local = dt.datetime.fromisoformat(local_text)
        except ValueError:
            raise DecodeError(
                "entry timestamp unreadable",
                table=decoder.layout.sql_name,
                position=f"{row['receiver_name']}:{row['sequence']}",
                field="entry_ts",
                data=str(local_text).encode()[:64],
                expected="YYYY-MM-DDTHH:MM:SS.ffffff",
            ) from None
        # fold=0: in the repeated hour of a DST fall-back, the first occurrence.
        utc = local.replace(tzinfo=self.zone).astimezone(dt.UTC)
        return utc_text(utc), (utc - _EPOCH) // _MILLISECOND


def utc_text(utc: dt.datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ``, as ``strftime`` writes it."""
    if utc.year < 1000:  # strftime does not pad such a year to 4 digits
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return utc.isoformat(timespec="microseconds")[:26] + "Z"  # no "+00:00"


# -- what an entry names ------------------------------------------------------


def object_names(row: Entry) -> tuple[str, str]:
    """(library, file) from the 30-char OBJECT: file 1-10, library 11-20."""
    return _names(row["object"])


@lru_cache(maxsize=4096)  # a journal names few objects: read each once
def _names(value: object) -> tuple[str, str]:
    text = str(value or "").ljust(30)
    return text[10:20].strip().upper(), text[0:10].strip().upper()


@lru_cache(maxsize=4096)
def qualified(value: object) -> str:
    """``LIBRARY/FILE`` of an OBJECT, the RRN map's table name."""
    return "/".join(_names(value))


def position(row: Entry) -> str:
    return f"{row['receiver_name']}:{row['sequence']}"
