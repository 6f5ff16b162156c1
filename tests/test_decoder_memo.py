"""Decoder memo: remembered values are the field functions' own, refusals never."""

from __future__ import annotations

import datetime as dt

from appliance.decoder import MEMO_MAX, compile_layout, field_decoder
from appliance.layouts import Column, make_layout

COLUMNS = [
    Column("K", "CHAR", 4, ccsid=297),
    Column("P", "DECIMAL", 7, 2),
    Column("D", "DATE", 10),
    Column("T", "TIMESTMP", 26),
    Column("N", "INTEGER", 4),
]
LAYOUT = make_layout("MAG", "MEMO", COLUMNS, ["K"])


def packed(cents: int) -> bytes:
    return bytes.fromhex(f"{abs(cents):07d}" + ("D" if cents < 0 else "F"))


def image(i: int) -> bytes:
    """A record whose fields all depend on ``i`` (so each one is new)."""
    day = dt.date(2026, 1, 1) + dt.timedelta(days=i % 3000)
    stamp = f"{day.isoformat()}-12.00.{i % 60:02d}.{i:06d}"
    return (
        f"{i % 10000:04d}".encode("cp297")
        + packed(i * 7 - 5000)
        + day.isoformat().encode("cp037")
        + stamp.encode("cp037")
        + (i - 500).to_bytes(4, "big", signed=True)
    )


def direct(raw_image: bytes) -> dict[str, object]:
    """The field functions called one by one, no memo in between."""
    values: dict[str, object] = {}
    for column in LAYOUT.columns:
        function = field_decoder(column, column.ccsid)
        values[column.name] = function(
            raw_image[column.offset : column.offset + column.size]
        )
    return values


def test_remembered_values_equal_the_field_functions_through_resets() -> None:
    """3x MEMO_MAX distinct records, then each again: every value as read directly."""
    decoder = compile_layout(LAYOUT)
    numbers = list(range(3 * MEMO_MAX)) + list(range(0, 3 * MEMO_MAX, 7))
    for i in numbers:
        decoded = decoder.decode_record(image(i))
        assert decoded.values == direct(image(i)), i
        assert (decoded.errors, decoded.blanks) == ([], [])
    assert decoder.decode(image(1234)) == {
        "K": "1234",
        "P": "36.38",
        "D": "2029-05-19",
        "T": "2029-05-19T12:00:34.001234",
        "N": 734,
    }


def test_memo_stays_within_its_bound() -> None:
    """No column keeps more than MEMO_MAX byte strings; integers keep none."""
    decoder = compile_layout(LAYOUT)
    for i in range(3 * MEMO_MAX + 5):
        decoder.decode_record(image(i))
    sizes = {name: memo for name, _, _, _, memo in decoder._plan}
    assert sizes["N"] is None
    assert all(0 < len(m) <= MEMO_MAX for n, m in sizes.items() if n != "N")


def test_bad_bytes_are_described_every_time() -> None:
    """A refusal is never remembered: the same bad date is an error twice."""
    decoder = compile_layout(LAYOUT)
    bad = bytearray(image(3))
    bad[8:18] = "2026-02-31".encode("cp037")
    first = decoder.decode_record(bytes(bad))
    second = decoder.decode_record(bytes(bad))
    expected = {
        "field": "D",
        "offset": 8,
        "bytes_hex": "2026-02-31".encode("cp037").hex().upper(),
        "reason": "impossible date",
        "expected": "*ISO date YYYY-MM-DD",
    }
    assert first.errors == second.errors == [expected]
    assert first.values["D"] is None and second.values["D"] is None
    assert first.values["K"] == second.values["K"] == "0003"


def test_blank_numeric_is_reported_every_time() -> None:
    """An all-0x40 DECIMAL is null and named in blanks at each record."""
    decoder = compile_layout(LAYOUT)
    blank = bytearray(image(4))
    blank[4:8] = b"\x40" * 4
    for _ in range(2):
        decoded = decoder.decode_record(bytes(blank))
        assert (decoded.values["P"], decoded.blanks) == (None, ["P"])


def test_null_flag_wins_over_remembered_bytes() -> None:
    """Bytes read once, then flagged null: the field is null, others remembered."""
    decoder = compile_layout(LAYOUT)
    raw = image(5)
    assert decoder.decode_record(raw).values["D"] == "2026-01-06"
    flagged = decoder.decode_record(raw, b"00100").values
    assert flagged == {**direct(raw), "D": None}
