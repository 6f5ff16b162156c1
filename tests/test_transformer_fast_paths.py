"""The transformer's shortcuts give what the long way gives, failures included.

Each shortcut (fixed-position timestamps, entry times through their whole
second, the remembered range of a layout version, entries read as dicts) is
checked here against the plain computation it replaces.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import sqlite3
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from appliance import changesource, store
from appliance.changesource import SourceBlock, new_entries
from appliance.decoder import compile_layout
from appliance.decoding.numbers import FieldError
from appliance.decoding.temporal import timestamp_field
from appliance.decoding.versions import DecoderVersions
from appliance.errors import DecodeError
from appliance.layouts import Column, Layout, make_layout

# --- TIMESTAMP at fixed positions ---------------------------------------------


def by_pattern(precision: int, raw: bytes) -> str:
    """The rule stated plainly: a regular expression, then the calendar."""
    fraction = rf"\.([0-9]{{{precision}}})" if precision else "()"
    found = re.fullmatch(
        r"([0-9]{4})-([0-9]{2})-([0-9]{2})-([0-9]{2})\.([0-9]{2})\.([0-9]{2})"
        + fraction,
        raw.decode("cp037"),
    )
    if found is None:
        raise FieldError("timestamp does not match its format", "")
    *parts, digits = found.groups()
    try:
        moment = dt.datetime(*(int(part) for part in parts))
    except ValueError:
        raise FieldError("impossible timestamp", "") from None
    return f"{moment.isoformat()}.{digits.ljust(6, '0')}"


def outcome(function: Any, raw: bytes) -> tuple[str, str]:
    try:
        return "value", function(raw)
    except FieldError as exc:
        return "refused", exc.reason


@pytest.mark.parametrize("precision", [0, 1, 6, 7, 12])
def test_timestamps_read_as_the_pattern_reads_them(precision: int) -> None:
    """Valid, mangled, truncated and impossible images: same value or reason."""
    fast = timestamp_field(precision)
    good = "2024-02-29-23.59.59" + ("." + "123456789012"[:precision]).rstrip(".")
    texts = [good]
    for year in ("0000", "0001", "1900", "2023", "2024", "9999"):
        for month_day in (
            "01-01",
            "02-29",
            "02-30",
            "04-31",
            "12-31",
            "13-01",
            "00-10",
        ):
            for clock in ("00.00.00", "23.59.59", "24.00.00", "23.60.00", "23.59.60"):
                texts.append(f"{year}-{month_day}-{clock}{good[19:]}")
    pick = random.Random(7)
    marks = "0123456789-. :/,²³Aa"
    for _ in range(3000):
        chars = list(good)
        for _ in range(pick.randint(1, 2)):
            chars[pick.randrange(len(chars))] = pick.choice(marks)
        texts.append("".join(chars)[: pick.choice([len(chars), len(chars) - 1])])
    images = [text.encode("cp037") for text in texts]
    images += [bytes(pick.randrange(256) for _ in range(len(good))) for _ in range(500)]
    for raw in images:
        assert outcome(fast, raw) == outcome(lambda b: by_pattern(precision, b), raw)


def test_timestamp_refusals_name_the_format() -> None:
    """The reason and the expected format of a refusal, as the dead letter shows."""
    fast = timestamp_field(6)
    cases = {
        "2024-03-15 13.45.30.123456": "timestamp does not match its format",
        "2024-03-15-13.45.30.12345": "timestamp does not match its format",
        "2023-02-29-13.45.30.123456": "impossible timestamp",
        "2024-03-15-24.00.00.000000": "impossible timestamp",
        "0000-01-01-00.00.00.000000": "impossible timestamp",
    }
    for text, reason in cases.items():
        with pytest.raises(FieldError) as caught:
            fast(text.encode("cp037"))
        assert (caught.value.reason, caught.value.expected) == (
            reason,
            "timestamp YYYY-MM-DD-HH.MM.SS.ffffff",
        )
    # EBCDIC superscript two (0xEA) reads as '²': a digit to isdigit(), not here.
    with pytest.raises(FieldError, match="does not match"):
        fast(bytes.fromhex("EA") + "024-03-15-13.45.30.123456".encode("cp037"))


# --- entry times through their second -------------------------------------------

DECODER = compile_layout(make_layout("MAG", "PRIX", [Column("A", "CHAR", 2)], ["A"]))
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def entry(ts: str) -> dict[str, Any]:
    return {
        "journal": "MAG/QSQJRN",
        "receiver_name": "QSQJRN0001",
        "receiver_library": "MAG",
        "sequence": 7,
        "commit_cycle": 0,
        "rrn": 3,
        "entry_ts": ts,
        "mined_at": 0.0,
    }


def transitions(zone: ZoneInfo, start: int, end: int) -> list[dt.datetime]:
    """Local wall times of the zone's offset changes, found to the second."""
    found = []
    before = dt.datetime(start, 1, 1, tzinfo=dt.UTC)
    while before.year < end:
        after = before + dt.timedelta(days=20)
        if before.astimezone(zone).utcoffset() != after.astimezone(zone).utcoffset():
            low, high = before, after
            while high - low > dt.timedelta(seconds=1):
                middle = (low + (high - low) / 2).replace(microsecond=0)
                same = middle.astimezone(zone).utcoffset()
                if same == before.astimezone(zone).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(high.astimezone(zone).replace(tzinfo=None))
        before = after
    return found


@pytest.mark.parametrize(
    ("zone_name", "start", "end"),
    [
        ("Europe/Paris", 2025, 2027),
        ("America/New_York", 2025, 2027),
        ("Australia/Lord_Howe", 2025, 2027),  # half-hour shifts
        ("Africa/Monrovia", 1900, 1973),  # offsets of -0:44:30, seconds included
    ],
)
def test_times_around_transitions_equal_full_conversions(
    zone_name: str, start: int, end: int
) -> None:
    """Every microsecond edge of the seconds around each transition, fold=0."""
    zone = ZoneInfo(zone_name)
    block = SourceBlock(zone)
    edges = transitions(zone, start, end)
    assert edges
    for edge in edges:
        for step in range(-3, 4):
            for micro in (0, 999, 1000, 999999):
                local = edge + dt.timedelta(seconds=step, microseconds=micro)
                text = local.isoformat(timespec="microseconds")
                made = block(entry(text), DECODER)
                utc = local.replace(tzinfo=zone).astimezone(dt.UTC)
                assert made["source"]["entry_ts_utc"] == utc.strftime(
                    "%Y-%m-%dT%H:%M:%S.%fZ"
                )
                assert made["entry_ts_ms"] == (utc - EPOCH) // dt.timedelta(
                    milliseconds=1
                )
    assert len(block._seconds) <= changesource.MEMO_MAX


def test_other_spellings_take_the_full_conversion() -> None:
    """Texts fromisoformat reads that are not the plain form: converted in full."""
    for zone_name, text in [
        ("America/Martinique", "2026-12-04 14:00:00.123456"),
        ("America/Martinique", "2026-12-04T14:00:00.12345"),
        ("America/Martinique", "2026-12-04T14:00:00"),
        ("America/Martinique", "1000-01-01T00:00:00.000001"),  # mean time -4:04:20
        ("Asia/Tokyo", "1000-01-01T05:00:00.000001"),  # UTC year 999: strftime
    ]:
        zone = ZoneInfo(zone_name)
        utc = dt.datetime.fromisoformat(text).replace(tzinfo=zone).astimezone(dt.UTC)
        made = SourceBlock(zone)(entry(text), DECODER)
        assert made["source"]["entry_ts_utc"] == changesource.utc_text(utc)
        assert made["entry_ts_ms"] == (utc - EPOCH) // dt.timedelta(milliseconds=1)
    block = SourceBlock(ZoneInfo("America/Martinique"))
    with pytest.raises(DecodeError) as caught:
        block(entry("2026-02-30T14:00:00.123456"), DECODER)
    assert (caught.value.field, caught.value.data) == (
        "entry_ts",
        b"2026-02-30T14:00:00.123456",
    )


# --- the layout version in force, remembered per table ------------------------


class Catalog:
    """A catalog that counts its reads and can be changed between them."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.reads = 0

    def load_layout(self, library: str, table: str) -> Layout:
        self.reads += 1
        return self.layout


def prix(width: int) -> Layout:
    return make_layout("MAG", "PRIX", [Column("A", "CHAR", width, ccsid=37)], ["A"])


def record(raw_id: int, width: int) -> dict[str, Any]:
    return {"id": raw_id, "code": "R", "data": b"\xc1" * width, "object": "PRIX"}


def test_remembered_version_follows_layout_changes(tmp_path: Path) -> None:
    """v1 until the D CG at 12, v2 after; an older entry still gets v1."""
    conn = store.connect(tmp_path / "pipeline.db")
    catalog = Catalog(prix(2))
    versions = DecoderVersions(conn, catalog, {})
    for raw_id in (10, 11):
        assert versions.decoder(record(raw_id, 2), "MAG", "PRIX", "p").layout == prix(2)
    assert catalog.reads == 1
    catalog.layout = prix(3)
    versions.changed({"id": 12}, "MAG/PRIX", "QSQJRN0001:12")
    found = versions.decoder(record(13, 3), "MAG", "PRIX", "p")
    assert (found.layout, catalog.reads) == (prix(3), 2)
    assert versions.decoder(record(11, 2), "MAG", "PRIX", "p").layout == prix(2)
    assert versions.decoder(record(14, 3), "MAG", "PRIX", "p").layout == prix(3)
    with pytest.raises(DecodeError, match="does not match its layout version"):
        versions.decoder(record(15, 2), "MAG", "PRIX", "p")
    assert catalog.reads == 2
    conn.close()


def test_forget_drops_the_remembered_version(tmp_path: Path) -> None:
    """After a rollback the versions are read again: a lost D CG is gone."""
    conn = store.connect(tmp_path / "pipeline.db")
    catalog = Catalog(prix(2))
    versions = DecoderVersions(conn, catalog, {})
    conn.execute("BEGIN")
    versions.decoder(record(10, 2), "MAG", "PRIX", "p")
    conn.execute("COMMIT")
    conn.execute("BEGIN")
    versions.changed({"id": 12}, "MAG/PRIX", "QSQJRN0001:12")
    catalog.layout = prix(3)
    versions.decoder(record(13, 3), "MAG", "PRIX", "p")
    conn.execute("ROLLBACK")
    versions.forget()
    assert versions.decoder(record(13, 2), "MAG", "PRIX", "p").layout == prix(2)
    assert catalog.reads == 2
    conn.close()


# --- entries as dicts -----------------------------------------------------------


def test_new_entries_are_the_lowest_new_ids_with_every_column(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "pipeline.db")
    for sequence, state in [(1, 1), (2, 0), (3, 0), (4, 0)]:
        conn.execute(
            "INSERT INTO raw_entries (journal, receiver_library, receiver_name,"
            " sequence, code, entry_type, entry_ts, mined_at, state, data)"
            " VALUES ('MAG/QSQJRN', 'MAG', 'R1', ?, 'R', 'PT', 't', 1.5, ?, x'C1')",
            (sequence, state),
        )
    got = new_entries(conn, 2)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(raw_entries)")]
    assert [list(entry) for entry in got] == [columns, columns]
    assert [(e["id"], e["sequence"], e["data"]) for e in got] == [
        (2, 2, b"\xc1"),
        (3, 3, b"\xc1"),
    ]
    assert isinstance(conn.execute("SELECT 1 AS one").fetchone(), sqlite3.Row)
    conn.close()
