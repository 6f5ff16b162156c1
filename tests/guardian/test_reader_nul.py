"""U+0000 read from the store is what the decoder makes of x'00': null.

The decoder refuses U+0000 in a text field (a field error: the field is null
in the change, and so in the ODH). The guardian's reader gets the same text
through ODBC; it must give null too, or each check finds the row different
and each repair sends a value the hub parks. A row whose key holds U+0000 is
left out of checks and loads (the transformer parks its changes, the hub
never has it), with an event naming it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import store
from appliance.config import BoxSettings, IbmiSection
from appliance.decoder import RecordDecoder
from appliance.guardian import digest, leg, reader
from appliance.guardian.reader import Head, TableReader
from appliance.layouts import Column, make_layout

HEAD = Head("MAG", "QSQJRN0001", 10, "2026-12-04T10:00:00.000000")
LAYOUT = make_layout(
    "MAG",
    "PRIX",
    [
        Column("ARTNUM", "CHAR", 6, ccsid=1147),
        Column("LABEL", "CHAR", 8, ccsid=1147),
        Column("NOTE", "VARCHAR", 8, ccsid=1147),
        Column("WIDE", "GRAPHIC", 3, ccsid=1200),
        Column("CODE", "CHAR", 2, ccsid=65535),
    ],
    ["ARTNUM"],
)
# As the driver fetches them: text as str, FOR BIT DATA as bytes.
ROWS: list[tuple[Any, ...]] = [
    ("000001", "plain", "note", "abc", b"\x00\x01"),
    ("000002", "a\x00b", "n\x00", "a\x00c", b"\x00\x00"),
    ("00\x0003", "key nul", "x", "xyz", b"\x01\x02"),
    ("000004", "\x00", "", "\x00\x00\x00", b"\xff\x00"),
]


def image(row: tuple[Any, ...]) -> bytes:
    """The record image DB2 for i would journal for ``row``."""
    artnum, label, note, wide, code = row
    text = note.encode("cp1147")
    return (
        artnum.ljust(6).encode("cp1147")
        + label.ljust(8).encode("cp1147")
        + len(text).to_bytes(2, "big")
        + text.ljust(8, b"\x40")
        + wide.ljust(3).encode("utf-16-be")
        + code
    )


def test_the_reader_gives_the_decoder_values_for_nul_text() -> None:
    """Field by field, CHAR, VARCHAR and GRAPHIC; FOR BIT DATA stays hex."""
    table = TableReader(IbmiSection(table_library="MAG", tables=["PRIX"]), LAYOUT)
    decoder = RecordDecoder(LAYOUT)
    for row in ROWS:
        decoded = decoder.decode_record(image(row))
        assert table.to_json(row) == decoded.values, row
    assert table.to_json(ROWS[1]) == {
        "ARTNUM": "000002",
        "LABEL": None,
        "NOTE": None,
        "WIDE": None,
        "CODE": "0000",
    }
    # The row hash the hub compares with: equal for the decoder's row.
    values = decoder.decode_record(image(ROWS[3])).values
    pk = digest.canonical_pk({"ARTNUM": "000004"})
    assert digest.row_hash(pk, table.to_json(ROWS[3])) == digest.row_hash(pk, values)
    assert decoder.decode_record(image(ROWS[3])).errors[0]["field"] == "LABEL"


class Cursor:
    def __init__(self) -> None:
        self.result: list[tuple[Any, ...]] = []

    def execute(self, sql: str, *params: Any) -> None:
        if "FETCH FIRST" in sql:  # a page: this table fits in one
            self.result = list(ROWS)
        else:  # a point read by primary key
            self.result = [r for r in ROWS if r[0] == params[0]]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.result

    def close(self) -> None:
        pass


class Source:
    def cursor(self) -> Cursor:
        return Cursor()

    def close(self) -> None:
        pass


@pytest.fixture
def control(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[leg.ControlLeg]:
    conn = store.connect(tmp_path / "pipeline.db")
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO raw_entries (id, journal, receiver_library, receiver_name,"
            " sequence, code, entry_type, entry_ts, mined_at, state)"
            " VALUES (1, 'MAG/QSQJRN', 'MAG', 'QSQJRN0001', 1, 'R', 'UP', '', 0, 1)"
        )
        conn.execute(
            "INSERT INTO bookmark (journal, receiver_library, receiver_name, sequence,"
            " processed, updated_at) VALUES ('MAG/QSQJRN', 'MAG', 'QSQJRN0001', 10,"
            " 1, 0)"
        )
    settings = BoxSettings(
        store={"id": "MQ01"},
        guardian={"initial_load": False, "interval_s": 0, "max_rows_per_s": 1e6},
    )
    monkeypatch.setattr(reader, "connect", lambda ibmi: Source())
    monkeypatch.setattr(reader, "load_layout", lambda src, ibmi, table: LAYOUT)
    monkeypatch.setattr(reader, "read_head", lambda src, ibmi: HEAD)
    leg_ = leg.ControlLeg(settings, conn)
    leg_.setup()
    yield leg_
    conn.close()


def drive(control: leg.ControlLeg) -> None:
    for _ in range(200):
        control.step()
        if control.job is None and not control.queue:
            return
    raise AssertionError(f"job not finished: {control.status()}")


def unkeyed_events(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT detail FROM guardian_events WHERE what = 'unkeyed'")
    return [r[0] for r in rows]


def test_a_check_hashes_nul_text_as_the_decoder_and_leaves_a_nul_key_out(
    control: leg.ControlLeg,
) -> None:
    control.handle_command("check", {"table": "PRIX"})
    drive(control)

    decoder = RecordDecoder(LAYOUT)
    expected = {}
    for row in (ROWS[0], ROWS[1], ROWS[3]):
        values = decoder.decode_record(image(row)).values
        pk = digest.canonical_pk({"ARTNUM": values["ARTNUM"]})
        expected[pk] = digest.row_hash(pk, values)
    cached = control.conn.execute("SELECT pk, row_hash FROM guardian_cache")
    assert {r[0]: r[1] for r in cached} == expected
    run = control.conn.execute("SELECT state, rows_read FROM guardian_runs")
    assert tuple(run.fetchone()) == ("sent", 3)
    assert unkeyed_events(control.conn) == [
        "rows=1 key holds U+0000, left out; first key=['00\\x0003']"
    ]


def test_a_load_sends_nul_text_as_null_and_no_row_for_a_nul_key(
    control: leg.ControlLeg,
) -> None:
    control.handle_command("load", {"table": "PRIX"})
    drive(control)

    sent = {
        json.loads(r[0])["ARTNUM"]: json.loads(r[1])
        for r in control.conn.execute(
            "SELECT key, after FROM changes WHERE op = 'r' ORDER BY id"
        )
    }
    assert sorted(sent) == ["000001", "000002", "000004"]
    assert sent["000002"] == {
        "ARTNUM": "000002",
        "LABEL": None,
        "NOTE": None,
        "WIDE": None,
        "CODE": "0000",
    }
    assert all("\x00" not in json.dumps(after) for after in sent.values())
    run = control.conn.execute("SELECT state, loaded FROM guardian_runs")
    assert tuple(run.fetchone()) == ("loaded", 3)
    assert len(unkeyed_events(control.conn)) == 1
