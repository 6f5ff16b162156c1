"""A journal row with a NULL where the relay needs a value, through real ODBC.

The emulator's DISPLAY_JOURNAL is wrapped, in the test's own database, by a
function that returns one chosen column of one chosen entry as NULL (the
real function and its data are untouched). The miner must not crash, must
store nothing of that window (the entry's position, or its meaning, is
unknown), must name receiver, sequence, window, column, value and what was
expected in the leg's status and ``meta`` row ``miner.alarm.bad_entry``,
retry with its backoff, and mine every entry exactly once when the source
gives the row whole again.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
import pytest

# pg and site are test_miner's fixtures, found by pytest under these names.
from test_miner import Site, drain, mined, pg, site  # noqa: F401

from appliance import miner, store
from appliance.emulator import grants, workload

pytestmark = pytest.mark.integration

COLUMNS = (
    "entry_timestamp",
    "sequence_number",
    "journal_code",
    "journal_entry_type",
    "count_or_rrn",
    "commit_cycle",
    "object",
    "object_type",
    "indicator_flag",
    "job_name",
    "job_user",
    "job_number",
    '"current_user"',
    "user_name",
    "program_name",
    "program_library",
    "receiver_library",
    "receiver_name",
    "null_value_indicators",
    "entry_data",
)


def wrap_display_journal(at: Site) -> None:
    """Put a NULL-giving function in front of the emulator's DISPLAY_JOURNAL."""
    signature = f"qsys2.display_journal({grants.DISPLAY_JOURNAL_ARGS})"
    picks = ", ".join(
        f"CASE WHEN n.field = '{c.strip(chr(34))}' THEN NULL ELSE j.{c} END"
        for c in COLUMNS
    )
    markers = ", ".join(f"${i}" for i in range(1, 24))
    with psycopg.connect(at.admin, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_get_function_arguments(%s::regprocedure)", (signature,)
        ).fetchone()
        assert row is not None
        # Moved, not renamed: its body names its parameters by the function's
        # name (display_journal.journal_library).
        conn.execute("CREATE SCHEMA emu_whole")
        conn.execute(f"ALTER FUNCTION {signature} SET SCHEMA emu_whole")
        conn.execute(
            "CREATE TABLE qsys2.emu_nulled (receiver_name text,"
            " sequence_number numeric, field text, PRIMARY KEY"
            " (receiver_name, sequence_number))"
        )
        conn.execute(
            f"CREATE FUNCTION qsys2.display_journal({row[0]})"
            " RETURNS SETOF qsys2.display_journal_row LANGUAGE sql"
            " SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$"
            f" SELECT {picks} FROM emu_whole.display_journal({markers}) j"
            " LEFT JOIN qsys2.emu_nulled n ON n.receiver_name = j.receiver_name"
            " AND n.sequence_number = j.sequence_number $$"
        )
        conn.execute(f'GRANT EXECUTE ON FUNCTION {signature} TO "{at.ibmi.user}"')


def null_field(at: Site, receiver: str, sequence: int, field: str | None) -> None:
    """Show ``field`` of that entry as NULL (None: show every entry whole)."""
    with psycopg.connect(at.admin, autocommit=True) as conn:
        conn.execute("DELETE FROM qsys2.emu_nulled")
        if field is not None:
            conn.execute(
                "INSERT INTO qsys2.emu_nulled VALUES (%s, %s, %s)",
                (receiver, sequence, field),
            )


def alarm(leg: miner.MinerLeg) -> dict[str, Any] | None:
    row = leg.conn.execute(
        "SELECT value FROM meta WHERE key = ?", (miner.BAD_ENTRY_KEY,)
    ).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def refused(leg: miner.MinerLeg, attempts: int = 40) -> dict[str, Any]:
    """Step (retrying at once, not after the backoff) until a window is refused."""
    before = store.counters(leg.conn).get("miner.unusable_windows", 0)
    for _ in range(attempts):
        leg._retry_at = 0.0
        leg.step()  # never raises: a refused window is a source fault
        if store.counters(leg.conn).get("miner.unusable_windows", 0) > before:
            found = alarm(leg)
            assert found is not None
            return found
    raise AssertionError("no window was refused")


def r_entries(at: Site) -> list[tuple[str, int]]:
    return [(r[0], r[1]) for r in at.journal() if r[2] == "R"]


def test_null_sequence_stops_its_window_until_the_row_is_whole(
    site: Site,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: a bare TypeError out of the miner. Now: named, retried, then mined."""
    workload.seed_store(site.emu, 25, seed=1)
    workload.run(site.emu, 0, changes=60, seed=2)
    wrap_display_journal(site)
    receiver, seq = next(e for e in r_entries(site) if e[1] > 150)
    start = (seq - 1) // 100 * 100 + 1
    null_field(site, receiver, seq, "sequence_number")
    leg = site.leg(window=100)

    with caplog.at_level(logging.WARNING, logger="appliance.miner"):
        first = refused(leg)
        second = refused(leg)
    assert {k: v for k, v in first.items() if k != "at"} == {
        "position": f"MAG/{receiver}:{start - 1}",
        "receiver": f"MAG/{receiver}",
        "sequence": None,
        "last_stored": start - 1,
        "window_end": start + 99,
        "field": "SEQUENCE_NUMBER",
        "value": "NULL",
        "expected": "a whole number, DECIMAL(21,0)",
        "attempt": 1,
    }
    assert second["attempt"] == 2  # retried with the backoff, not a crash
    # Nothing of the refused window was stored, nothing after it either.
    assert max(r[1] for r in mined(site.db_path)) < start
    bookmark = miner.load_bookmark(leg.conn, "MAG/QSQJRN")
    assert bookmark is not None and bookmark.sequence == start - 1
    assert leg.status() == (
        f"unusable entry MAG/{receiver}:? (stored up to {start - 1}), retrying:"
        " SEQUENCE_NUMBER=NULL expected a whole number, DECIMAL(21,0)"
    )
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # once per fault, not once per retry
    assert "sequence=unknown" in errors[0].getMessage()

    null_field(site, receiver, seq, None)
    leg._retry_at = 0.0
    drain(leg)
    assert mined(site.db_path) == site.journal()
    assert alarm(leg) is None
    assert not leg.status().startswith("unusable")
    assert store.counters(leg.conn)["miner.unusable_windows"] == 2
    leg.close()


@pytest.mark.parametrize(
    ("field", "name", "expected"),
    [
        ("journal_code", "JOURNAL_CODE", "a journal code, CHAR(1)"),
        ("journal_entry_type", "JOURNAL_ENTRY_TYPE", "an entry type, CHAR(2)"),
        ("entry_timestamp", "ENTRY_TIMESTAMP", "a TIMESTAMP"),
        ("object", "OBJECT", "file, library and member on a R entry"),
        (
            "count_or_rrn",
            "COUNT_OR_RRN",
            "the record's RRN, DECIMAL(21,0) on a R entry",
        ),
        ("commit_cycle", "COMMIT_CYCLE", "a cycle number (0: none) on a R entry"),
        ("receiver_name", "RECEIVER_NAME", "the receiver's name"),
        ("receiver_library", "RECEIVER_LIBRARY", "the receiver's library"),
    ],
)
def test_null_in_a_needed_column_is_named_with_its_position(
    site: Site,  # noqa: F811
    field: str,
    name: str,
    expected: str,
) -> None:
    """Code, type, time, object, RRN, cycle, receiver: the same refusal.

    Before, each went through as '' or 0: a row change dropped as if of
    another table or ignored, a change taken as outside its commit cycle,
    an RRN 0 in the map, an entry time the transformer could not read.
    """
    workload.seed_store(site.emu, 10, seed=3)
    workload.run(site.emu, 0, changes=20, seed=4)
    wrap_display_journal(site)
    receiver, seq = next(e for e in r_entries(site) if e[1] > 40)
    null_field(site, receiver, seq, field)
    leg = site.leg(window=40)

    found = refused(leg)
    start = (seq - 1) // 40 * 40 + 1
    assert (found["field"], found["expected"], found["value"]) == (
        name,
        expected,
        "NULL",
    )
    assert (found["receiver"], found["sequence"]) == (f"MAG/{receiver}", seq)
    assert found["last_stored"] == start - 1
    assert max(r[1] for r in mined(site.db_path)) < start

    null_field(site, receiver, seq, None)
    leg._retry_at = 0.0
    drain(leg)
    assert mined(site.db_path) == site.journal()
    assert alarm(leg) is None
    leg.close()


def test_null_where_an_entry_may_lack_a_value_is_mined_as_before(
    site: Site,  # noqa: F811
) -> None:
    """Job, program, user, null map: NULL is a normal answer, nothing refused."""
    workload.seed_store(site.emu, 10, seed=5)
    wrap_display_journal(site)
    receiver, seq = r_entries(site)[3]
    for field in ("job_name", "program_name", "current_user", "null_value_indicators"):
        null_field(site, receiver, seq, field)
        leg = site.leg(window=40)
        drain(leg)
        leg.close()
        site.db_path.unlink()
        for suffix in ("-wal", "-shm"):
            site.db_path.with_name(site.db_path.name + suffix).unlink(missing_ok=True)
    null_field(site, receiver, seq, "job_name")
    leg = site.leg(window=40)
    drain(leg)
    assert mined(site.db_path) == site.journal()
    assert store.counters(leg.conn).get("miner.unusable_windows", 0) == 0
    leg.close()
