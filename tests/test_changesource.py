"""The source block of a change: UTC text, epoch milliseconds, bad entry times."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from appliance import changesource
from appliance.changesource import SourceBlock, utc_text
from appliance.decoder import compile_layout
from appliance.errors import DecodeError
from appliance.layouts import Column, make_layout

DECODER = compile_layout(
    make_layout("MAG", "PRIX", [Column("ARTNUM", "CHAR", 6, ccsid=297)], ["ARTNUM"])
)


def entry(ts: Any, sequence: int = 7) -> dict[str, Any]:
    return {
        "journal": "MAG/QSQJRN",
        "receiver_name": "QSQJRN0001",
        "receiver_library": "MAG",
        "sequence": sequence,
        "commit_cycle": 0,
        "rrn": 3,
        "entry_ts": ts,
        "mined_at": 1796407200.5,
    }


def test_source_block_names_the_entry_and_its_times() -> None:
    """Martinique is UTC-4: 14:00 local is 18:00Z, and its epoch milliseconds."""
    made = SourceBlock(ZoneInfo("America/Martinique"))(
        entry("2026-12-04T14:00:00.123456"), DECODER
    )
    assert made == {
        "source": {
            "journal": "MAG/QSQJRN",
            "receiver": "QSQJRN0001",
            "receiver_library": "MAG",
            "sequence": 7,
            "commit_cycle": 0,
            "library": "MAG",
            "table": "PRIX",
            "rrn": 3,
            "entry_ts": "2026-12-04T14:00:00.123456",
            "entry_ts_utc": "2026-12-04T18:00:00.123456Z",
        },
        "entry_ts_ms": 1796407200123,
        "mined_at": 1796407200.5,
    }


def test_repeated_hour_of_a_fall_back_is_its_first_occurrence() -> None:
    """Paris 2026-10-25 02:30 happens twice; fold=0 is the summer one (UTC+2)."""
    block = SourceBlock(ZoneInfo("Europe/Paris"))
    for _ in range(2):  # converted, then remembered
        made = block(entry("2026-10-25T02:30:00.000000"), DECODER)
        assert made["source"]["entry_ts_utc"] == "2026-10-25T00:30:00.000000Z"
        assert made["entry_ts_ms"] == 1792888200000


def test_remembered_times_equal_fresh_conversions_through_resets() -> None:
    """More entry times than the memo holds: each one as converted afresh."""
    zone = ZoneInfo("America/New_York")
    block = SourceBlock(zone)
    start = dt.datetime(2026, 3, 8, 0, 0, 0, 1)  # across the spring-forward gap
    for i in list(range(changesource.MEMO_MAX + 50)) * 2:
        local = start + dt.timedelta(seconds=13 * i)
        text = local.isoformat(timespec="microseconds")
        made = block(entry(text), DECODER)
        utc = local.replace(tzinfo=zone).astimezone(dt.UTC)
        assert made["source"]["entry_ts_utc"] == utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        assert made["entry_ts_ms"] == (utc - epoch) // dt.timedelta(milliseconds=1)
    assert len(block._times) <= changesource.MEMO_MAX


def test_utc_text_pads_like_strftime_except_below_year_1000() -> None:
    """Years 1000+ are the isoformat text; older ones keep strftime's spelling."""
    assert utc_text(dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)) == (
        "2026-01-02T03:04:05.000006Z"
    )
    old = dt.datetime(999, 1, 2, tzinfo=dt.UTC)
    assert utc_text(old) == old.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_unreadable_entry_time_is_a_decode_error_every_time() -> None:
    """A bad entry time is never remembered: refused, field entry_ts, position."""
    block = SourceBlock(ZoneInfo("UTC"))
    for _ in range(2):
        with pytest.raises(DecodeError) as caught:
            block(entry("2026-13-01T00:00:00", sequence=42), DECODER)
        error = caught.value
        assert (error.reason, error.field, error.position, error.table) == (
            "entry timestamp unreadable",
            "entry_ts",
            "QSQJRN0001:42",
            "PRIX",
        )
        assert error.data == b"2026-13-01T00:00:00"
