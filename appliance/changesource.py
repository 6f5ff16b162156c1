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

The UTC text and milliseconds of an entry time depend on nothing but its
text and the zone, and the entries of one transaction share their time: the
last ``MEMO_MAX`` conversions are remembered.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any
from zoneinfo import ZoneInfo

from appliance.decoder import RecordDecoder
from appliance.errors import DecodeError

# Entry times whose conversion is remembered before the memo is emptied.
MEMO_MAX = 1024
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)


class SourceBlock:
    """Makes the ``source`` of the changes of an entry, for one store zone."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._times: dict[str, tuple[str, int]] = {}

    def __call__(self, row: sqlite3.Row, decoder: RecordDecoder) -> dict[str, Any]:
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

    def _convert(self, row: sqlite3.Row, decoder: RecordDecoder) -> tuple[str, int]:
        """(UTC text, epoch milliseconds) of the row's entry time, remembered."""
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
        converted = (utc_text(utc), (utc - _EPOCH) // _MILLISECOND)
        if len(self._times) >= MEMO_MAX:
            self._times.clear()
        self._times[local_text] = converted
        return converted


def utc_text(utc: dt.datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ``, as ``strftime`` writes it."""
    if utc.year < 1000:  # strftime does not pad such a year to 4 digits
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return utc.isoformat(timespec="microseconds")[:26] + "Z"  # no "+00:00"
