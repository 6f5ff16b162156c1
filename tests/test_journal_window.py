"""A window of DISPLAY_JOURNAL rows as raw entries, column by column (issue 9).

``journalrows.entries_from_rows`` converts a whole window at once; it must give,
row for row, what the one-row reference ``journalrows.entry_from_row`` gives,
for the values a driver normally returns and for the odd ones (NULLs,
integers, text timestamps, padded names). ``check_window`` and ``select``
must decide as the per-entry rules do.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

import pytest

from appliance import journalrows
from appliance.errors import SourceError
from appliance.journal import Read, Receiver

JOURNAL = "MAG/QSQJRN"
OBJECTS = (
    "PRIX      MAG       PRIX      ",
    "STOCK     MAG       STOCK     ",
    "CLIENT    MAG       CLIENT    ",
    "PRIX      AUTRE     PRIX      ",
    "",
)


def driver_row(seq: int, rng: random.Random, receiver: str = "QSQJRN0003") -> tuple:
    """A row as psqlODBC or the IBM i driver returns it (padded CHAR columns)."""
    code, kind = rng.choice((("R", "UP"), ("R", "PT"), ("C", "CM"), ("J", "IE")))
    # A row change always names its file; other entries may name none.
    obj = rng.choice(OBJECTS[:-1] if code == "R" else OBJECTS)
    return (
        dt.datetime(2026, 12, 4, 8, 30, 1, rng.randrange(1, 1_000_000)),
        Decimal(seq),
        code,
        kind,
        Decimal(rng.randrange(0, 5000)),
        Decimal(rng.randrange(0, 90_000)),
        obj,
        "*QDDS     ",
        rng.choice("01"),
        "QPADEV0001",
        "CAISSE    ",
        "123456",
        "CAISSE    ",
        "PGMPRIX   ",
        "MAG       ",
        receiver.ljust(10),
        "0010",
        bytearray(rng.randbytes(rng.randrange(0, 40))),
    )


def reference(rows: list[Any]) -> list[tuple[Any, ...]]:
    """What entry_from_row gives, as tuples, mined_at left out."""
    out = []
    for row in rows:
        entry = journalrows.entry_from_row(row, JOURNAL)
        out.append(tuple(entry[name] for name in journalrows.ENTRY_FIELDS[:-1]))
    return out


def windowed(rows: list[Any], mined_at: float = 12.5) -> list[tuple[Any, ...]]:
    entries = journalrows.entries_from_rows(rows, JOURNAL, mined_at)
    assert all(e[-1] == mined_at for e in entries)
    return [e[:-1] for e in entries]


def test_window_of_driver_rows_equals_the_row_by_row_conversion() -> None:
    rng = random.Random(4)
    rows = [driver_row(seq, rng) for seq in range(1, 501)]
    got = windowed(rows)
    assert got == reference(rows)
    first = dict(zip(journalrows.ENTRY_FIELDS, got[0], strict=False))
    assert first["receiver_name"] == "QSQJRN0003"
    assert first["job"] == "123456/CAISSE/QPADEV0001"
    assert first["program"] == "PGMPRIX" and first["object_type"] == "*QDDS"
    assert isinstance(first["sequence"], int) and first["sequence"] == 1
    assert isinstance(first["null_map"], bytes) and first["null_map"] == b"0010"
    assert isinstance(first["data"], bytes)
    assert len(first["entry_ts"]) == 26 and "T" in first["entry_ts"]


# (column index, odd value): each one sends its column the value-by-value way.
# NULLs only where an entry may lack the value (check_rows refuses the rest;
# see the tests below); row 3 is a J entry when its column is OBJECT,
# COUNT_OR_RRN or COMMIT_CYCLE.
ODD_VALUES = [
    (0, dt.datetime(2026, 12, 4, 8, 30, 1)),  # no microseconds
    (0, "2026-12-04 08:30:01.5"),  # a driver giving text
    (0, dt.datetime(2026, 12, 4, 8, 30, 1, 7, tzinfo=dt.UTC)),
    (1, 77),
    (4, None),
    (4, 17),
    (5, None),
    (6, None),
    (6, "PRIX      MAG       PRIX\t\t"),
    (9, None),
    (11, 123456),
    (12, None),
    (16, None),
    (16, b"0011"),
    (16, bytearray(b"01")),
    (17, None),
    (17, b"\xc1"),
]


@pytest.mark.parametrize(("column", "value"), ODD_VALUES)
def test_odd_value_in_a_column_converts_as_the_reference_does(
    column: int, value: Any
) -> None:
    rng = random.Random(column)
    rows = [list(driver_row(seq, rng)) for seq in range(10, 20)]
    rows[3][column] = value
    if column == 1:
        rows[3][1] = 13  # keep the order: 10, 11, 12, 13 ...
    if column in (4, 5, 6):
        rows[3][2:4] = ["J", "PR"]
    assert windowed(rows) == reference(rows)


# (column index, value, name, expected): a row lacking what the relay needs.
REFUSED = [
    (1, None, "SEQUENCE_NUMBER", "a whole number, DECIMAL(21,0)"),
    (1, "x", "SEQUENCE_NUMBER", "a whole number, DECIMAL(21,0)"),
    (0, None, "ENTRY_TIMESTAMP", "a TIMESTAMP"),
    (0, "04/12/2026", "ENTRY_TIMESTAMP", "a TIMESTAMP"),
    (2, None, "JOURNAL_CODE", "a journal code, CHAR(1)"),
    (2, " ", "JOURNAL_CODE", "a journal code, CHAR(1)"),
    (3, None, "JOURNAL_ENTRY_TYPE", "an entry type, CHAR(2)"),
    (14, None, "RECEIVER_LIBRARY", "the receiver's library"),
    (15, None, "RECEIVER_NAME", "the receiver's name"),
    (6, None, "OBJECT", "file, library and member on a R entry"),
    (6, " " * 30, "OBJECT", "file, library and member on a R entry"),
    (4, None, "COUNT_OR_RRN", "the record's RRN, DECIMAL(21,0) on a R entry"),
    (5, None, "COMMIT_CYCLE", "a cycle number (0: none) on a R entry"),
]


@pytest.mark.parametrize(("column", "value", "name", "expected"), REFUSED)
def test_a_row_without_what_the_relay_needs_refuses_the_window(
    column: int, value: Any, name: str, expected: str
) -> None:
    """Named: receiver, last good sequence before it, column, raw value, need."""
    rng = random.Random(column)
    rows = [list(driver_row(seq, rng)) for seq in range(10, 20)]
    rows[3][2:4] = ["R", "UP"]
    rows[3][6] = OBJECTS[0]
    rows[3][column] = value
    read = Read(rcv(), 10, 19, at_head=False)
    with pytest.raises(journalrows.EntryError) as caught:
        journalrows.entries_from_rows(rows, JOURNAL, 1.0, read)
    error = caught.value
    sequence = None if column == 1 else 13
    assert (error.receiver, error.sequence, error.after, error.end, error.field) == (
        "MAG/QSQJRN0003",
        sequence,
        9,
        19,
        name,
    )
    shown = "NULL" if value is None else repr(value)  # SQL's word, not Python's
    assert (error.value, error.expected) == (shown, expected)
    assert str(error) == (
        "journal entry unusable receiver=MAG/QSQJRN0003"
        f" sequence={'unknown' if sequence is None else 13} window=10..19"
        f" last_stored=9 field={name} value={shown} expected={expected}"
    )
    assert isinstance(error, SourceError)  # retried like any source fault


def test_the_first_bad_row_is_named() -> None:
    """Two bad rows: the first in the result is named, with its own sequence."""
    rng = random.Random(3)
    rows = [list(driver_row(seq, rng)) for seq in range(10, 20)]
    rows[6][1] = None
    rows[2][15] = None
    read = Read(rcv(), 10, 19, at_head=False)
    with pytest.raises(
        journalrows.EntryError, match=r"sequence=12 window=10\.\.19 last_"
    ):
        journalrows.entries_from_rows(rows, JOURNAL, 1.0, read)
    rows[2][15] = "QSQJRN0003"
    with pytest.raises(journalrows.EntryError) as caught:
        journalrows.entries_from_rows(rows, JOURNAL, 1.0, read)
    assert (caught.value.sequence, caught.value.field) == (None, "SEQUENCE_NUMBER")


def test_blank_object_rrn_and_cycle_pass_on_entries_that_need_none() -> None:
    """J and C entries without object, RRN (J) or cycle (J) convert as before."""
    rng = random.Random(5)
    rows = [list(driver_row(seq, rng)) for seq in range(10, 20)]
    rows[1][2:7] = ["J", "PR", None, None, None]
    rows[2][2:5] = ["C", "SC", None]
    rows[2][6] = None
    assert windowed(rows) == reference(rows)


def test_empty_window_gives_no_entries_and_a_short_row_is_refused() -> None:
    assert journalrows.entries_from_rows([], JOURNAL, 1.0) == []
    row = driver_row(1, random.Random(1))
    with pytest.raises(IndexError):
        journalrows.entries_from_rows([row, row[:17]], JOURNAL, 1.0)


# -- check_window ------------------------------------------------------------


def rcv(name: str = "QSQJRN0003") -> Receiver:
    return Receiver("MAG", name, "ONLINE", "2026-12-04T08:00:00.000000", None, 1, 900)


def entries(sequences: list[int], names: list[str] | None = None) -> list[tuple]:
    rng = random.Random(9)
    rows = [
        driver_row(seq, rng, (names or [])[i] if names else "QSQJRN0003")
        for i, seq in enumerate(sequences)
    ]
    return journalrows.entries_from_rows(rows, JOURNAL, 1.0)


def test_check_window_accepts_gaps_and_the_window_edges() -> None:
    read = Read(rcv(), 100, 199, at_head=False)
    journalrows.check_window(entries([100, 103, 150, 199]), read)
    journalrows.check_window([], read)


@pytest.mark.parametrize(
    ("sequences", "message"),
    [
        ([99, 100], "entry sequence 99 outside window 100..199 or out of order"),
        ([100, 200], "entry sequence 200 outside window 100..199 or out of order"),
        ([100, 120, 110], "entry sequence 110 outside window 100..199 or out of order"),
        ([100, 120, 120], "sequence 120 outside window 100..199 or out of order"),
    ],
)
def test_check_window_names_the_first_entry_out_of_range_or_order(
    sequences: list[int], message: str
) -> None:
    with pytest.raises(SourceError, match=message):
        journalrows.check_window(entries(sequences), Read(rcv(), 100, 199, False))


def test_check_window_refuses_an_entry_of_another_receiver() -> None:
    names = ["QSQJRN0003", "QSQJRN0002", "QSQJRN0003"]
    window = entries([100, 101, 102], names)
    with pytest.raises(
        SourceError,
        match="entry from receiver 'QSQJRN0002', expected 'QSQJRN0003' at sequence 101",
    ):
        journalrows.check_window(window, Read(rcv(), 100, 199, False))


# -- select -------------------------------------------------------------------


def test_select_decides_as_internal_and_wanted_do_per_entry() -> None:
    rng = random.Random(11)
    rows = [driver_row(seq, rng) for seq in range(1, 801)]
    window = journalrows.entries_from_rows(rows, JOURNAL, 1.0)
    tables = [" prix", "STOCK "]
    keep, hidden = journalrows.select(window, "mag", tables)
    as_dicts = [dict(zip(journalrows.ENTRY_FIELDS, e, strict=True)) for e in window]
    expected = [
        e
        for e, d in zip(window, as_dicts, strict=True)
        if not journalrows.internal(d) and journalrows.wanted(d, "mag", tables)
    ]
    assert keep == expected
    assert hidden == sum(1 for d in as_dicts if journalrows.internal(d))
    assert 0 < hidden < len(window) and 0 < len(keep) < len(window) - hidden
    kept_objects = {
        e[journalrows.OBJECT_AT] for e in keep if e[journalrows.CODE_AT] == "R"
    }
    assert kept_objects == {OBJECTS[0], OBJECTS[1]}
