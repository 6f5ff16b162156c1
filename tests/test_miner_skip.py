"""An operator's ``skip_entry``: past exactly the entry the miner's alarm names.

The journal rows come through real ODBC from the emulator, with one column of
one entry shown as NULL by tests/test_miner_nulls.py's wrapper. The command
goes the operator's way: queued (and audited) in ``commands``, carried out by
the miner leg through :class:`appliance.commands.Runner`.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

# pg and site are test_miner's fixtures, found by pytest under these names.
from test_miner import Site, drain, mined, pg, site  # noqa: F401
from test_miner_nulls import alarm, null_field, r_entries, refused, wrap_display_journal

from appliance import checks, cli, commands, entryskip, journal, miner, store
from appliance.emulator import workload

integration = pytest.mark.integration


def carry_out(
    leg: miner.MinerLeg, args: dict[str, Any], user: str = "tech"
) -> tuple[str, str]:
    """Queue ``skip_entry`` as the web page or the CLI does; the leg runs it."""
    conn = store.connect(leg.settings.pipeline.db_path)
    try:
        command_id = commands.request(conn, "miner", "skip_entry", args, user)
        assert commands.Runner(conn, leg, "miner").run_pending() == 1
        row = conn.execute(
            "SELECT state, result FROM commands WHERE id = ?", (command_id,)
        ).fetchone()
        audited = conn.execute(
            "SELECT user_name, action FROM audit WHERE command_id = ?", (command_id,)
        ).fetchone()
    finally:
        conn.close()
    assert tuple(audited) == (user, "skip_entry")
    return str(row[0]), str(row[1])


def entries_mined(db_path: Path) -> list[tuple[Any, ...]]:
    """The journal entries mined, without the relay's own marks (code '*')."""
    return [e for e in mined(db_path) if e[2] != "*"]


def marks(db_path: Path) -> list[tuple[Any, ...]]:
    """(sequence, type) of the relay's own marks among the mined rows."""
    return [(e[1], e[3]) for e in mined(db_path) if e[2] == "*"]


def letters(leg: miner.MinerLeg) -> list[dict[str, Any]]:
    rows = leg.conn.execute(
        "SELECT stage, table_name, position, field, bytes_hex, expected, reason,"
        " payload, state FROM dead_letters ORDER BY id"
    ).fetchall()
    names = (
        "stage",
        "table",
        "position",
        "field",
        "hex",
        "expected",
        "reason",
        "payload",
        "state",
    )
    return [dict(zip(names, r, strict=True)) for r in rows]


def window_start(seq: int, window: int) -> int:
    return (seq - 1) // window * window + 1


def prepared(
    site: Site,  # noqa: F811
    field: str,
    *,
    above: int,
    seed: int,
) -> tuple[str, int]:
    """A store's journal with no hidden entries; one R entry shown with a NULL."""
    site.emu.gap_rate = 0.0
    workload.seed_store(site.emu, 25, seed=seed)
    workload.run(site.emu, 0, changes=60, seed=seed + 1)
    wrap_display_journal(site)
    receiver, seq = next(e for e in r_entries(site) if e[1] > above)
    null_field(site, receiver, seq, field)
    return receiver, seq


@integration
def test_skip_is_refused_without_an_alarm_or_for_another_entry(
    site: Site,  # noqa: F811
) -> None:
    """A stale or mistyped command changes nothing: no letter, same bookmark."""
    receiver, seq = prepared(site, "commit_cycle", above=150, seed=11)
    leg = site.leg(window=100)
    named = {"receiver": f"MAG/{receiver}", "sequence": seq}

    state, result = carry_out(leg, named)
    assert state == "failed"
    assert f"no unusable-entry alarm is up: MAG/{receiver}:{seq} not skipped" in result

    found = refused(leg)
    assert found["sequence"] == seq
    start = window_start(seq, 100)
    wrong = [
        ({"receiver": f"MAG/{receiver}", "sequence": seq + 1}, f"{seq + 1}"),
        ({"receiver": "MAG/QSQJRN9999", "sequence": seq}, "QSQJRN9999"),
        ({"receiver": f"MAG/{receiver}", "null_after": start - 1}, "without"),
    ]
    for args, shown in wrong:
        state, result = carry_out(leg, args)
        assert state == "failed"
        assert f"the alarm names MAG/{receiver}:{seq}, not" in result
        assert shown in result.split(", not ", 1)[1]
    assert letters(leg) == []
    bookmark = miner.load_bookmark(leg.conn, "MAG/QSQJRN")
    assert bookmark is not None and bookmark.sequence == start - 1
    assert max(r[1] for r in mined(site.db_path)) < start
    assert alarm(leg) is not None
    assert "miner.skipped_entries" not in store.counters(leg.conn)
    leg.close()


@integration
def test_a_skip_asked_while_the_miner_was_down_waits_for_its_window(
    site: Site,  # noqa: F811
) -> None:
    """Queued before a restarted miner has read the alarm's window again, the
    skip goes back to pending, then is carried out once the read raised the
    alarm again; past ``SKIP_WAIT_S`` it is refused as stale."""
    receiver, seq = prepared(site, "commit_cycle", above=150, seed=17)
    first = site.leg(window=100)
    refused(first)
    first.close()  # the miner stops; the alarm stays on the page
    leg = site.leg(window=100)
    named = {"receiver": f"MAG/{receiver}", "sequence": seq}
    conn = store.connect(leg.settings.pipeline.db_path)
    try:
        command_id = commands.request(conn, "miner", "skip_entry", named, "tech")
        runner = commands.Runner(
            conn, leg, "miner", clock=iter(range(0, 99, 1)).__next__
        )
        assert runner.run_pending() == 1
        state = conn.execute(
            "SELECT state FROM commands WHERE id = ?", (command_id,)
        ).fetchone()[0]
        assert state == "pending"  # put back: the window is not read yet
        refused(leg)
        assert runner.run_pending() == 1
        state, result = conn.execute(
            "SELECT state, result FROM commands WHERE id = ?", (command_id,)
        ).fetchone()
    finally:
        conn.close()
    assert state == "done", result
    assert result.startswith(f"skipped MAG/{receiver}:{seq}: dead letter ")
    assert store.counters(leg.conn)["miner.skipped_entries"] == 1
    leg.close()

    again = site.leg(window=100)
    again._bad_alarm = True  # an alarm left from before this start ...
    again._started -= miner.SKIP_WAIT_S  # ... and the wait is over
    state, result = carry_out(again, named)
    assert state == "failed"
    assert "the alarm shown is from before the miner's restart" in result
    again.close()


@integration
def test_skip_is_refused_when_the_entry_reads_whole_again(
    site: Site,  # noqa: F811
) -> None:
    """The leg reads the window again: a fault that mended is not skipped."""
    receiver, seq = prepared(site, "journal_code", above=150, seed=61)
    leg = site.leg(window=100)
    refused(leg)
    null_field(site, receiver, seq, None)
    state, result = carry_out(leg, {"receiver": f"MAG/{receiver}", "sequence": seq})
    assert state == "failed"
    assert result.endswith(
        f"MAG/{receiver}:{seq} not skipped: it reads whole now; the next read"
        " stores it with its window"
    )
    assert letters(leg) == []
    leg._retry_at = 0.0
    drain(leg)
    assert mined(site.db_path) == site.journal()
    assert alarm(leg) is None
    assert "miner.skipped_entries" not in store.counters(leg.conn)
    leg.close()


@integration
@pytest.mark.parametrize(
    ("field", "column", "checked"),
    [
        ("commit_cycle", "COMMIT_CYCLE", "own"),
        ("object", "OBJECT", "all"),
    ],
)
def test_skip_of_the_named_entry_parks_it_and_mines_every_other_once(
    site: Site,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    field: str,
    column: str,
    checked: str,
) -> None:
    """Before: no way past. Now: one dead letter, the rest mined, a check asked."""
    receiver, seq = prepared(site, field, above=150, seed=21)
    whole = site.journal()
    skipped = next(e for e in whole if (e[0], e[1]) == (receiver, seq))
    leg = site.leg(window=100)
    refused(leg)

    with caplog.at_level(logging.WARNING, logger="appliance.miner"):
        state, result = carry_out(
            leg, {"receiver": f"mag/{receiver.lower()}", "sequence": seq}, "marie"
        )
    assert state == "done", result
    assert result.startswith(f"skipped MAG/{receiver}:{seq}: dead letter 1,")
    assert alarm(leg) is None
    assert not leg.status().startswith("unusable")
    bookmark = miner.load_bookmark(leg.conn, "MAG/QSQJRN")
    assert bookmark is not None and bookmark.sequence == seq

    leg._retry_at = 0.0
    drain(leg)
    got = entries_mined(site.db_path)
    assert got == [e for e in whole if e != skipped]
    assert len(set(got)) == len(got)

    [letter] = letters(leg)
    row = json.loads(letter["payload"])["row"]
    assert (letter["stage"], letter["position"], letter["field"]) == (
        "miner",
        f"MAG/{receiver}:{seq}",
        column,
    )
    assert letter["state"] == "parked"
    assert letter["reason"].startswith("skipped by operator marie (command ")
    assert f"{column}=NULL expected" in letter["reason"]
    assert row[column] is None
    assert row["SEQUENCE_NUMBER"] == str(seq)
    assert row["RECEIVER_NAME"].rstrip() == receiver
    assert row["JOURNAL_CODE"] == "R"
    assert row["ENTRY_DATA"] == skipped[4].hex().upper() == letter["hex"]
    tables = sorted(t.upper() for t in site.ibmi.tables)
    if checked == "own":
        own = letter["table"]
        assert own in tables
        assert checks.asked(leg.conn) == [(own, "skipped_entry")]
    else:
        assert letter["table"] == ""
        assert checks.asked(leg.conn) == [(t, "skipped_entry") for t in tables]
    assert store.counters(leg.conn)["miner.skipped_entries"] == 1
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "skipped by an operator" in r.getMessage()
    ]
    assert len(warned) == 1
    assert f"position=MAG/{receiver}:{seq} user=marie" in warned[0]
    assert f"field={column}" in warned[0]
    leg.close()


@integration
def test_a_second_unusable_entry_of_the_window_raises_its_own_alarm(
    site: Site,  # noqa: F811
) -> None:
    """The skip moves past its sequence only; the next one needs its own skip."""
    receiver, first = prepared(site, "count_or_rrn", above=150, seed=71)
    second = next(s for r, s in r_entries(site) if r == receiver and s > first + 5)
    assert window_start(second, 100) == window_start(first, 100)
    with psycopg.connect(site.admin, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO qsys2.emu_nulled VALUES (%s, %s, 'count_or_rrn')",
            (receiver, second),
        )
    whole = site.journal()
    leg = site.leg(window=100)
    refused(leg)
    state, result = carry_out(leg, {"receiver": f"MAG/{receiver}", "sequence": first})
    assert state == "done", result
    leg._retry_at = 0.0
    found = refused(leg)
    assert (found["sequence"], found["last_stored"]) == (second, first)
    state, result = carry_out(leg, {"receiver": f"MAG/{receiver}", "sequence": first})
    assert state == "failed" and f"the alarm names MAG/{receiver}:{second}" in result
    state, result = carry_out(leg, {"receiver": f"MAG/{receiver}", "sequence": second})
    assert state == "done", result
    leg._retry_at = 0.0
    drain(leg)
    gone = {(receiver, first), (receiver, second)}
    assert entries_mined(site.db_path) == [e for e in whole if (e[0], e[1]) not in gone]
    assert [x["position"] for x in letters(leg)] == [
        f"MAG/{receiver}:{first}",
        f"MAG/{receiver}:{second}",
    ]
    assert store.counters(leg.conn)["miner.skipped_entries"] == 2
    assert alarm(leg) is None
    leg.close()


@integration
def test_null_sequence_row_is_dropped_when_the_window_leaves_it_one_place(
    site: Site,  # noqa: F811
) -> None:
    """Named by the sequence stored before it; the window's entries kept once."""
    receiver, seq = prepared(site, "sequence_number", above=150, seed=31)
    whole = site.journal()
    skipped = next(e for e in whole if (e[0], e[1]) == (receiver, seq))
    leg = site.leg(window=100)
    found = refused(leg)
    after = window_start(seq, 100) - 1
    assert (found["sequence"], found["last_stored"]) == (None, after)

    state, result = carry_out(leg, {"receiver": f"MAG/{receiver}", "sequence": seq})
    assert state == "failed"
    assert "the row without a sequence after" in result
    state, result = carry_out(
        leg, {"receiver": f"MAG/{receiver}", "null_after": after + 1}
    )
    assert state == "failed" and "nothing skipped" in result

    state, result = carry_out(leg, {"receiver": f"MAG/{receiver}", "null_after": after})
    assert state == "done", result
    leg._retry_at = 0.0
    drain(leg)
    assert entries_mined(site.db_path) == [e for e in whole if e != skipped]
    [letter] = letters(leg)
    assert letter["position"] == f"MAG/{receiver}:? after {after}"
    assert letter["field"] == "SEQUENCE_NUMBER"
    row = json.loads(letter["payload"])["row"]
    assert row["SEQUENCE_NUMBER"] is None
    assert row["ENTRY_DATA"] == skipped[4].hex().upper()
    assert checks.asked(leg.conn) == [(letter["table"], "skipped_entry")]
    assert alarm(leg) is None
    assert store.counters(leg.conn)["miner.skipped_entries"] == 1
    leg.close()


def hidden_gap_row(site: Site) -> tuple[str, int]:  # noqa: F811
    """An R entry past 100 whose window holds 3 or more hidden entries."""
    workload.seed_store(site.emu, 25, seed=41)  # the fixture's 5 % hidden gaps
    workload.run(site.emu, 0, changes=60, seed=42)
    wrap_display_journal(site)
    visible = {(e[0], e[1]) for e in site.journal()}
    return next(
        (rcv, s)
        for rcv, s in r_entries(site)
        if s > 100
        and sum(
            (rcv, n) not in visible
            for n in range(window_start(s, 100), window_start(s, 100) + 100)
        )
        >= 3
    )


@integration
def test_null_sequence_row_among_hidden_entries_is_placed_by_reading_them(
    site: Site,  # noqa: F811
) -> None:
    """Hidden entries leave holes in the plain read; read with
    INCLUDE_INTERNAL they fill them, so the row's one place is known."""
    receiver, seq = hidden_gap_row(site)
    null_field(site, receiver, seq, "sequence_number")
    leg = site.leg(window=100)
    found = refused(leg)
    after = int(found["last_stored"])
    state, result = carry_out(leg, {"receiver": f"MAG/{receiver}", "null_after": after})
    assert state == "done", result
    [letter] = letters(leg)
    assert letter["position"] == f"MAG/{receiver}:? after {after}"
    bookmark = miner.load_bookmark(leg.conn, "MAG/QSQJRN")
    assert bookmark is not None and bookmark.sequence == window_start(seq, 100) + 99

    null_field(site, receiver, seq, None)
    leg._retry_at = 0.0
    drain(leg)
    assert entries_mined(site.db_path) == [
        e for e in site.journal() if e[:2] != (receiver, seq)
    ]
    leg.close()


@integration
def test_null_sequence_row_among_hidden_gaps_is_refused_and_says_why(
    site: Site,  # noqa: F811
) -> None:
    """A source that cannot show internal entries (before 7.5 TR5 / 7.4
    TR26) leaves the holes unknown: the row could be any of them, refused."""
    receiver, seq = hidden_gap_row(site)
    null_field(site, receiver, seq, "sequence_number")
    leg = site.leg(window=100)
    leg._internal_sql = "SELECT no_such_column FROM no_such_table"
    found = refused(leg)
    after = int(found["last_stored"])
    state, result = carry_out(leg, {"receiver": f"MAG/{receiver}", "null_after": after})
    assert state == "failed"
    assert "are missing between" in result
    assert "an entry lost at the source could hide behind it" in result
    assert letters(leg) == []
    assert alarm(leg) is not None
    bookmark = miner.load_bookmark(leg.conn, "MAG/QSQJRN")
    assert bookmark is not None and bookmark.sequence == after

    null_field(site, receiver, seq, None)  # the source mends: all mined once
    leg._retry_at = 0.0
    drain(leg)
    assert mined(site.db_path) == site.journal()
    leg.close()


@integration
def test_cli_refuses_at_once_then_queues_the_named_entry(
    site: Site,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`appliance skip-entry`: no alarm or another entry, exit 1; else queued."""
    receiver, seq = prepared(site, "commit_cycle", above=150, seed=51)
    leg = site.leg(window=100)
    config = tmp_path / "box.toml"
    config.write_text(f'[store]\nid = "MQ01"\n[pipeline]\ndb_path = "{site.db_path}"\n')
    base = ["--config", str(config), "skip-entry", "--receiver", f"MAG/{receiver}"]

    assert cli.main([*base, "--sequence", str(seq)]) == 1
    assert "no unusable-entry alarm is up" in capsys.readouterr().err
    refused(leg)
    assert cli.main([*base, "--sequence", str(seq + 1)]) == 1
    err = capsys.readouterr().err
    assert f"the alarm names --receiver MAG/{receiver} --sequence {seq}" in err
    count = leg.conn.execute("SELECT count(*) FROM commands").fetchone()[0]
    assert count == 0  # refused before anything was queued

    argv = [*base, "--sequence", str(seq), "--user", "marie", "--wait-s", "0"]
    assert cli.main(argv) == 75
    assert "skip_entry queued as command 1" in capsys.readouterr().out
    runner = commands.Runner(store.connect(site.db_path), leg, "miner")
    assert runner.run_pending() == 1
    state, by = leg.conn.execute(
        "SELECT state, requested_by FROM commands WHERE id = 1"
    ).fetchone()
    assert (state, by) == ("done", "marie")
    assert letters(leg)[0]["position"] == f"MAG/{receiver}:{seq}"
    runner.conn.close()
    leg.close()


def test_skip_arguments_name_one_entry_the_way_the_alarm_does() -> None:
    assert commands.skip_entry_args(
        {"receiver": "mag/qsqjrn0001", "sequence": "151"}
    ) == {"receiver": "MAG/QSQJRN0001", "sequence": 151}
    assert commands.skip_entry_args(
        {"receiver": "MAG/QSQJRN0001", "null_after": 0}
    ) == {"receiver": "MAG/QSQJRN0001", "null_after": 0}
    bad = [
        {"receiver": "QSQJRN0001", "sequence": 1},
        {"receiver": "MAG/QSQ JRN", "sequence": 1},
        {"receiver": "MAG/QSQJRN0001"},
        {"receiver": "MAG/QSQJRN0001", "sequence": 1, "null_after": 0},
        {"receiver": "MAG/QSQJRN0001", "sequence": 0},
        {"receiver": "MAG/QSQJRN0001", "sequence": True},
        {"receiver": "MAG/QSQJRN0001", "sequence": 1.5},
        {"receiver": "MAG/QSQJRN0001", "null_after": -1},
    ]
    for args in bad:
        with pytest.raises(commands.CommandError):
            commands.skip_entry_args(args)


def _read(start: int, end: int, *, at_head: bool) -> journal.Read:
    rcv = journal.Receiver("MAG", "QSQJRN0001", "ATTACHED", "t", None, 1, end)
    return journal.Read(rcv, start, end, at_head=at_head)


def test_null_row_place_one_hole_or_after_the_last() -> None:
    """One place left for the dropped row: the bookmark moves, else refused."""
    behind = _read(101, 200, at_head=False)
    hole = [s for s in range(101, 201) if s != 150]
    assert entryskip.null_row_end(hole, behind) == 200
    assert entryskip.null_row_end(list(range(101, 180)), behind) == 200
    assert entryskip.null_row_end([], behind) == 200
    head = _read(101, 200, at_head=True)
    assert entryskip.null_row_end(hole[:-10], head) == 190  # the hole is its place
    assert entryskip.null_row_end(list(range(101, 200)), head) == 200
    with pytest.raises(entryskip.SkipRefused, match=r"could be any of 180\.\.200"):
        entryskip.null_row_end(list(range(101, 180)), head)
    two = [s for s in range(101, 201) if s not in (120, 150)]
    with pytest.raises(entryskip.SkipRefused, match="sequences 120, 150 are missing"):
        entryskip.null_row_end(two, behind)


def test_a_skipped_boundary_marks_the_cycle_it_may_have_ended() -> None:
    """A C entry, or one whose code is unknown, may have ended a cycle: the
    skip stores a SKIP_MARK with that cycle (0 when it does not read)."""
    row: list[Any] = [None] * 18
    row[2], row[5] = "C", Decimal(42)
    assert entryskip.boundary_cycle(row) == 42
    row[2] = None  # unknown code, its cycle readable
    assert entryskip.boundary_cycle(row) == 42
    row[5] = None  # neither: every open cycle is cut
    assert entryskip.boundary_cycle(row) == 0
    row[5] = b"\x00"
    assert entryskip.boundary_cycle(row) == 0
    for code in ("R", "J", "F", "D"):
        row[2] = code
        assert entryskip.boundary_cycle(row) is None
    # A row change whose code reads NULL is no boundary: its type or object
    # says so; its cycle is checked again when it ends (SKIP_ROW_MARK).
    row[2], row[3], row[5], row[6] = None, "UP", Decimal(42), "PRIX      MAG"
    assert entryskip.boundary_cycle(row) is None
    assert entryskip.row_cycle(row) == 42
    row[3] = None
    assert entryskip.boundary_cycle(row) is None
    row[5] = Decimal(0)
    assert entryskip.row_cycle(row) is None
    # No object, code NULL: an entry outside commitment control (cycle 0) or
    # of a type that ends no cycle is no boundary; a C entry's 0 is unknown.
    row[3], row[6] = None, None
    assert entryskip.boundary_cycle(row) is None
    row[3], row[5] = "NR", Decimal(42)
    assert entryskip.boundary_cycle(row) is None
    row[2], row[3], row[5] = "C", "CM", Decimal(0)
    assert entryskip.boundary_cycle(row) == 0


def test_hidden_sequences_are_holes_of_the_plain_read_below_its_last() -> None:
    def rows(*sequences: int | None) -> list[list[Any]]:
        return [[None, None if n is None else Decimal(n)] for n in sequences]

    shown = rows(101, 102, 103, 104, 105, None, 106, 107, 109)
    plain = rows(101, 102, 104, None, 106, 108)  # 108: journaled between the reads
    # 103, 105, 107 are internal; 109 is past the plain read's last, not taken.
    assert entryskip.hidden_sequences(shown, plain) == {103, 105, 107}
    assert entryskip.hidden_sequences(shown, rows(None)) == set()
    assert entryskip.hidden_sequences([], plain) == set()
